//! Shared test harness: starts the real server in-process on 127.0.0.1:0 with real ONNX
//! Runtime and the fixture models, waits for gRPC health, and talks real gRPC to it.
#![allow(dead_code)]

pub mod child;
pub mod faults;
pub mod nginx;
pub mod prometheus;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use child::{ChildServer, Listening, modserve, output_within, read_logs};
pub use faults::{Action, Faults};
use modserve::app::{MODERATION_SERVICE, Server};
use modserve::config::{Config, Overrides};
use modserve::serving::grpc::pb;
use modserve::serving::grpc::pb::moderation_client::ModerationClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// The ONNX Runtime library the tests load: `$MODSERVE_ONNXRUNTIME_LIB`, else the one
/// `scripts/fetch-onnxruntime.sh` puts in `.ort/`.
pub fn ort_lib() -> PathBuf {
    let lib = std::env::var_os("MODSERVE_ONNXRUNTIME_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".ort/libonnxruntime.so.1.31.1"));
    assert!(
        lib.is_file(),
        "ONNX Runtime not found at {}: run scripts/setup (or scripts/fetch-onnxruntime.sh)",
        lib.display()
    );
    lib
}

/// A config with the given `[models]`/`[tasks]`/other tables, listening on free ports, with
/// paths relative to the repository root.
pub fn config(body: &str) -> Config {
    config_with("", body)
}

/// Like `config`, with extra `[server]` keys.
pub fn config_with(server: &str, body: &str) -> Config {
    let text = unbounded_shadows(&format!(
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\nonnxruntime_lib = {:?}\n{server}\n{body}",
        ort_lib().display().to_string()
    ));
    Config::parse(&text, &repo().join("test.toml"), &Overrides::default())
        .unwrap_or_else(|e| panic!("bad test config: {e:?}\n{text}"))
}

/// A test server's config text with its shadows' CPU unbounded (`max_cpu_fraction = 1.0`,
/// `cpu_reserve = 0`), unless the text sets either key itself. The suite keeps this machine's CPUs
/// busy, and under the shipped defaults (a 5% budget, shadows only while half the CPUs are free)
/// test shadows would be held back, and tests that count comparisons would wait for nothing;
/// `isolation.rs` tests the budget and the headroom, defaults included.
pub fn unbounded_shadows(text: &str) -> String {
    const KEYS: &str = "max_cpu_fraction = 1.0\ncpu_reserve = 0\n";
    if text.contains("max_cpu_fraction") || text.contains("cpu_reserve") {
        text.to_string()
    } else if text.contains("[shadow]\n") {
        text.replacen("[shadow]\n", &format!("[shadow]\n{KEYS}"), 1)
    } else {
        format!("{text}\n[shadow]\n{KEYS}")
    }
}

/// The tiny abuse fixture as the abuse task.
pub const ONE_MODEL: &str = r#"
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[tasks.abuse]
live = "tiny-abuse"
"#;

/// The tiny abuse fixture live, its v2 in shadow on every review.
pub const LIVE_AND_SHADOW: &str = r#"
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[tasks.abuse]
live = "tiny-abuse"
shadows = [{ model = "tiny-abuse-v2", sample_rate = 1.0 }]
"#;

/// The two tiny fixture models as the abuse and fraud tasks.
pub const BASIC: &str = r#"
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[models.tiny-fraud]
path = "tests/fixtures/tiny-fraud"
[tasks.abuse]
live = "tiny-abuse"
[tasks.fraud]
live = "tiny-fraud"
"#;

pub struct TestServer {
    pub server: Server,
    pub grpc_addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    /// The HTTP/JSON API, when the config sets `server.http_listen`.
    pub http_addr: Option<std::net::SocketAddr>,
}

impl TestServer {
    /// Starts a server and returns once health says SERVING.
    pub async fn start(config: Config) -> TestServer {
        TestServer::start_wrapped(config, None).await
    }

    /// Starts a server whose model backends inject the faults the test arms in the returned
    /// `Faults` (`faults.rs`).
    pub async fn start_faulty(config: Config) -> (TestServer, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        (TestServer::start_wrapped(config, Some(faults.wrap())).await, faults)
    }

    async fn start_wrapped(config: Config, wrap: Option<modserve::inference::backend::Wrap>) -> TestServer {
        let server = Server::start_wrapped(config, wrap).await.expect("server starts");
        let grpc_addr = server.grpc_addr;
        let metrics_addr = server.metrics_addr;
        let http_addr = server.http_addr;
        let ts = TestServer { server, grpc_addr, metrics_addr, http_addr };
        ts.wait_serving().await;
        ts
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr)).unwrap().connect().await.expect("connect")
    }

    pub async fn client(&self) -> ModerationClient<Channel> {
        ModerationClient::new(self.channel().await)
    }

    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    async fn wait_serving(&self) {
        wait_serving(self.channel().await).await;
    }

    /// Polls the scrape until `name{labels}` has grown by `want` since `base` (shadow work and
    /// file-triggered reloads are asynchronous by design). Bounded: gives up after 30 s and
    /// returns the last growth.
    pub async fn wait_for(&self, base: &str, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
        wait_for_growth(self.metrics_addr, base, name, labels, want).await
    }

    /// Polls the scrape until the gauge `name{labels}` reads exactly `want` (30 s at most);
    /// returns the last reading.
    pub async fn wait_gauge(&self, name: &str, labels: &[(&str, &str)], want: f64) -> Option<f64> {
        let mut last = None;
        for _ in 0..600 {
            last = metric(&self.scrape().await, name, labels);
            if last == Some(want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        last
    }

    pub async fn scrape(&self) -> String {
        scrape(self.metrics_addr).await
    }

    pub async fn stop(self) {
        self.server.shutdown();
        self.server.wait().await.expect("clean shutdown");
    }
}

/// `TestServer::wait_for` on the server whose metrics port is `addr`.
pub async fn wait_for_growth(
    addr: std::net::SocketAddr,
    base: &str,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) -> f64 {
    let mut last = 0.0;
    for _ in 0..600 {
        last = delta(base, &scrape(addr).await, name, labels);
        if last >= want {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

/// Follows the health Watch stream until the Moderation service reports SERVING (60 s at most).
/// A stream that breaks is watched again: while a replica is rolled, the connection may still
/// reach the process that is going away.
pub async fn wait_serving(channel: Channel) {
    let mut health = HealthClient::new(channel);
    let wait = async {
        loop {
            let why = match health.watch(HealthCheckRequest { service: MODERATION_SERVICE.into() }).await {
                Ok(watch) => {
                    let mut watch = watch.into_inner();
                    loop {
                        match watch.message().await {
                            Ok(Some(msg)) if msg.status == ServingStatus::Serving as i32 => return,
                            Ok(Some(_)) => {}
                            Ok(None) => break "the health stream ended".to_string(),
                            Err(e) => break format!("the health stream broke: {e}"),
                        }
                    }
                }
                Err(e) => format!("health watch refused: {e}"),
            };
            eprintln!("wait_serving: {why}; watching again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait).await.expect("server became SERVING within 60 s");
}

/// GETs `/metrics` over plain HTTP/1.1.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    http_get(addr, "/metrics").await.1
}

/// A minimal HTTP/1.1 GET: returns (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to metrics port");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    (status, body.to_string())
}

/// The value of the series `name{labels...}` in a Prometheus text scrape (labels may be a
/// subset; all must match), or `None`.
/// The value of the one series of `name` whose labels include `labels`. Panics if several
/// series match: the test names too few labels (every test shares one process-wide registry,
/// so a series another test made must not be picked by accident); sum them with `sum_where`.
pub fn metric(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<_> = series(scrape, name).into_iter().filter(|(l, _)| has_labels(l, labels)).collect();
    assert!(matching.len() <= 1, "{name} {labels:?} matches {} series, name more labels: {matching:?}", matching.len());
    matching.first().map(|(_, v)| *v)
}

/// Whether a series' labels include every one of `labels`, by exact name and value.
fn has_labels(series: &std::collections::HashMap<String, String>, labels: &[(&str, &str)]) -> bool {
    labels.iter().all(|(k, v)| series.get(*k).map(String::as_str) == Some(*v))
}

pub fn review(id: &str, text: &str) -> pb::Review {
    pb::Review { id: id.into(), text: text.into(), ..Default::default() }
}

pub fn request(reviews: Vec<pb::Review>) -> pb::ClassifyRequest {
    pb::ClassifyRequest { reviews, ..Default::default() }
}

/// One record of `tests/fixtures/golden.json`: the expected scores of a fixture model.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Golden {
    pub model: String,
    pub text: String,
    #[serde(default)]
    pub features: std::collections::HashMap<String, f64>,
    pub probabilities: Vec<f32>,
    pub decision: String,
}

pub fn golden() -> Vec<Golden> {
    let text = std::fs::read_to_string(fixture("golden.json")).expect("golden.json");
    serde_json::from_str(&text).expect("golden.json parses")
}

pub fn decision_name(d: i32) -> &'static str {
    match pb::Decision::try_from(d).expect("known decision") {
        pb::Decision::Allow => "ALLOW",
        pb::Decision::Review => "REVIEW",
        pb::Decision::Reject => "REJECT",
        pb::Decision::Unspecified => "UNSPECIFIED",
    }
}

/// Scores of one task result must equal the golden ones within float tolerance.
pub fn assert_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: label count");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() <= 1e-5, "{what}: score {a} != golden {e}");
    }
}

/// `tests/fixtures/labelled.jsonl` with every other line on the `kids` surface, written into
/// `dir`; returns the file and its lines.
pub fn labelled_every_other_on_kids(dir: &Path) -> (PathBuf, Vec<serde_json::Value>) {
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(fixture("labelled.jsonl"))
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if i % 2 == 1 {
                v["surface"] = "kids".into();
            }
            v
        })
        .collect();
    let path = dir.join("labelled.jsonl");
    std::fs::write(&path, lines.iter().map(|v| v.to_string() + "\n").collect::<String>()).unwrap();
    (path, lines)
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Tests that must not overlap with others (`exclusive`) against the rest (`shared`).
static LOCK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Metrics are process-wide, so tests that assert on them run alone (hold the guard for the
/// whole test) and compare against a baseline scrape taken at their start.
pub async fn exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    LOCK.write().await
}

/// Every other test holds this for its whole run: any number of them together, never beside an
/// `exclusive` one (they would move its metrics and take its CPU).
pub async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    LOCK.read().await
}

/// `shared` for a test outside the async runtime.
pub fn shared_blocking() -> tokio::sync::RwLockReadGuard<'static, ()> {
    LOCK.blocking_read()
}

/// `exclusive` for a test outside the async runtime.
pub fn exclusive_blocking() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    LOCK.blocking_write()
}

/// The growth of `name` summed over the series whose labels include `labels`, from `base` to
/// `now` (missing counts as 0).
pub fn delta(base: &str, now: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sum_where(now, name, labels) - sum_where(base, name, labels)
}

/// Sends one unary Classify over a bare HTTP/2 connection with the given `grpc-timeout` and
/// returns the server's `grpc-status` and `grpc-message`.
pub async fn raw_classify(
    addr: std::net::SocketAddr,
    req: &modserve::serving::grpc::pb::ClassifyRequest,
    timeout: &str,
) -> (i32, String) {
    use prost::Message;
    raw_call(addr, "Classify", &req.encode_to_vec(), timeout).await
}

/// Sends `payload` (whatever bytes, in one gRPC frame) to `modserve.v1.Moderation/METHOD` over
/// a bare HTTP/2 connection; returns the server's `grpc-status` and `grpc-message`.
pub async fn raw_call(addr: std::net::SocketAddr, method: &str, payload: &[u8], timeout: &str) -> (i32, String) {
    use http_body_util::{BodyExt, Full};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut body = vec![0u8];
    body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    body.extend_from_slice(payload);
    let request = hyper::Request::post(format!("http://{addr}/modserve.v1.Moderation/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    // Errors come back as trailers-only responses (status in the headers) or as trailers.
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let get = |name: &str| headers.get(name).or_else(|| trailers.get(name)).map(|v| v.to_str().unwrap().to_string());
    let status = get("grpc-status").expect("grpc-status").parse().unwrap();
    let message = get("grpc-message").map(|m| percent_decode(&m)).unwrap_or_default();
    (status, message)
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every series of `name` in a scrape, with its labels parsed.
pub fn series(scrape: &str, name: &str) -> Vec<(std::collections::HashMap<String, String>, f64)> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = series.split_once('{').unwrap_or((series, "}"));
            if series_name != name {
                return None;
            }
            let labels = rest
                .trim_end_matches('}')
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once("=\"")?;
                    Some((k.to_string(), v.trim_end_matches('"').to_string()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The sum of every series of `name` whose labels include all of `labels`, exactly.
pub fn sum_where(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(scrape, name).into_iter().filter(|(l, _)| has_labels(l, labels)).map(|(_, v)| v).sum()
}

/// Decision names in index order, as `modserve_*` metric labels spell them.
pub const DECISIONS: [&str; 3] = ["allow", "review", "reject"];

/// A decision name in any case ("REVIEW", "review") as an index: 0 allow, 1 review, 2 reject.
pub fn decision_index(decision: &str) -> usize {
    DECISIONS.iter().position(|d| d.eq_ignore_ascii_case(decision)).unwrap_or_else(|| panic!("decision {decision}"))
}

/// The `strict-2` policy the policy tests configure (insult only: review at 0.3, reject at 0.6),
/// applied by hand to a tiny-abuse score row: the decision's index.
pub fn strict_2(scores: &[f32]) -> usize {
    match scores[0] {
        s if s >= 0.6 => 2,
        s if s >= 0.3 => 1,
        _ => 0,
    }
}

/// An HTTP/2 frame: length, type, flags, stream id, payload.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// The error code of the first GOAWAY frame in `bytes` (frames the server sent).
pub fn goaway_code(mut bytes: &[u8]) -> Option<u32> {
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let payload = bytes.get(9..9 + len)?;
        if bytes[3] == 0x7 && len >= 8 {
            return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        bytes = &bytes[9 + len..];
    }
    None
}
