//! The client examples a team copies, run against the real server: `examples/classify.rs`
//! (Rust, tonic) and `examples/python/classify.py` (grpcio). Both classify batches unary and
//! over a stream, retry RESOURCE_EXHAUSTED (a queue of one that is really full) and UNAVAILABLE
//! (nothing listening) with bounded backoff, and do not retry INVALID_ARGUMENT, UNAUTHENTICATED
//! or DEADLINE_EXCEEDED; they send a bearer token and speak TLS with a CA file. Every case runs
//! both clients with the same flags and checks the same output.
//!
//! The Rust example is built here with `cargo build --example classify` (a no-op after `cargo
//! test`, which builds examples); the Python one installs its pinned dependencies into
//! `.tools/examples-venv` on first use (PyPI), which takes about 20 s once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::*;
use modserve::serving::grpc::pb::moderation_client::ModerationClient;
use tonic::Code;

#[derive(Debug, Clone, Copy)]
enum Client {
    Rust,
    Python,
}

const BOTH: [Client; 2] = [Client::Rust, Client::Python];

/// How a client run ended: exit code, the result lines (parsed), stderr.
#[derive(Debug)]
struct Run {
    code: i32,
    results: Vec<serde_json::Value>,
    stderr: String,
}

impl Run {
    /// The retry lines on stderr.
    fn retries(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.starts_with("retry ")).collect()
    }

    /// (review, task) -> decision, sorted.
    fn decisions(&self) -> Vec<(String, String, String)> {
        let mut d: Vec<_> = self
            .results
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_else(|| panic!("{k} missing from {r}")).to_string();
                (s("review_id"), s("task"), s("decision"))
            })
            .collect();
        d.sort();
        d
    }
}

/// The Rust example's binary, built once per test run in the profile of this test binary.
fn rust_example() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // target/<profile>/deps/clients-HASH -> target/<profile>
        let profile_dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
        let mut build = Command::new(env!("CARGO"));
        build.current_dir(repo()).args(["build", "--locked", "--quiet", "--example", "classify"]);
        // Without the variables cargo set for this test binary: build scripts (ring's) rerun when
        // CARGO_MANIFEST_DIR or CARGO_PKG_NAME change, so the nested build would rebuild half the
        // tree here, and the next `cargo test` rebuild it back.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let set_by_cargo = ["CARGO_PKG_", "CARGO_BIN_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_PRIMARY_"]
                .iter()
                .any(|p| name.starts_with(p))
                || ["CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR", "OUT_DIR"].contains(&&*name);
            if set_by_cargo {
                build.env_remove(&*name);
            }
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let out = build.output().expect("cargo");
        assert!(out.status.success(), "cargo build --example classify: {}", String::from_utf8_lossy(&out.stderr));
        let binary = profile_dir.join("examples/classify");
        assert!(binary.is_file(), "{} missing after the build", binary.display());
        binary
    })
}

/// Builds the Rust example and installs the Python one's dependencies, once, so that no test
/// times a build or a `pip install`: a failed call to a port where nothing listens does both.
fn warm_up() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        for client in BOTH {
            let run = run(client, &["--target", "127.0.0.1:1", "--attempts", "1"], &[]);
            assert!(run.stderr.contains("failed: UNAVAILABLE"), "{client:?} warm-up: {}", run.stderr);
        }
    });
}

/// Runs a client with `args` (and `envs`), blocking this worker thread only.
fn run(client: Client, args: &[&str], envs: &[(&str, &str)]) -> Run {
    run_watching(client, args, envs, |_| {})
}

/// `run`, calling `on_stderr` with each line the client writes to stderr as it writes it (e.g.
/// to end a held stall once the client has been refused).
fn run_watching(client: Client, args: &[&str], envs: &[(&str, &str)], mut on_stderr: impl FnMut(&str)) -> Run {
    use std::io::{BufRead, Read};
    tokio::task::block_in_place(|| {
        let mut cmd = match client {
            Client::Rust => Command::new(rust_example()),
            Client::Python => {
                let mut c = Command::new("python3");
                c.arg(repo().join("examples/python/classify.py"));
                c
            }
        };
        let mut child = cmd
            .args(args)
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the client runs");
        let (mut out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let (stdout, stderr) = std::thread::scope(|s| {
            let reader = s.spawn(move || {
                let mut bytes = Vec::new();
                out.read_to_end(&mut bytes).expect("the client's stdout");
                String::from_utf8_lossy(&bytes).into_owned()
            });
            let mut stderr = String::new();
            for line in std::io::BufReader::new(err).split(b'\n') {
                let line = String::from_utf8_lossy(&line.expect("the client's stderr")).into_owned();
                on_stderr(&line);
                stderr.push_str(&line);
                stderr.push('\n');
            }
            (reader.join().unwrap(), stderr)
        });
        let status = child.wait().expect("the client exits");
        let results = stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{client:?}: not a JSON line ({e}): {l}\n{stderr}"))
            })
            .collect();
        Run { code: status.code().unwrap_or(-1), results, stderr }
    })
}

fn reviews_file(dir: &Path, name: &str, reviews: &[(&str, &str)]) -> String {
    let path = dir.join(name);
    let lines: String =
        reviews.iter().map(|(id, text)| serde_json::json!({ "id": id, "text": text }).to_string() + "\n").collect();
    std::fs::write(&path, lines).unwrap();
    path.display().to_string()
}

const REVIEWS: [(&str, &str); 5] = [
    ("a", "You IDIOT!"),
    ("b", "win a free prize at www"),
    ("c", "lovely product, works well"),
    ("d", "you are stupid"),
    ("e", "great product"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_classify_batches_unary_and_over_a_stream() {
    let _shared = shared().await;
    tokio::task::block_in_place(warm_up);
    let server = TestServer::start(config(BASIC)).await;
    let dir = tempfile::tempdir().unwrap();
    let reviews = reviews_file(dir.path(), "reviews.jsonl", &REVIEWS);
    let target = server.grpc_addr.to_string();
    let mut seen = Vec::new();
    for client in BOTH {
        for stream in [false, true] {
            let mut args = vec!["--target", &target, "--reviews", &reviews, "--batch-size", "2"];
            if stream {
                args.push("--stream");
            }
            let run = run(client, &args, &[]);
            assert_eq!(run.code, 0, "{client:?} stream={stream}: {}", run.stderr);
            assert!(run.retries().is_empty(), "{}", run.stderr);
            let decisions = run.decisions();
            assert_eq!(decisions.len(), 2 * REVIEWS.len(), "one line per review and task: {decisions:?}");
            let find = |id: &str, task: &str| decisions.iter().find(|d| d.0 == id && d.1 == task).unwrap().2.clone();
            assert_eq!(find("a", "abuse"), "REJECT");
            assert_eq!(find("b", "fraud"), "REJECT");
            assert_eq!(find("e", "abuse"), "ALLOW");
            assert!(run.results.iter().all(|r| r["model"] == "tiny-abuse" || r["model"] == "tiny-fraud"));
            seen.push(decisions);
        }
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "both clients, unary and stream, agree: {seen:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_do_not_retry_a_bad_request_or_a_missing_token() {
    let _shared = shared().await;
    tokio::task::block_in_place(warm_up);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "ingest-token\n").unwrap();
    let server_extra = format!("moderation_token_file = {:?}", path_str(&token));
    let body = format!("{BASIC}\n[admin]\nallow_unauthenticated = true\n");
    let server = TestServer::start(config_with(&server_extra, &body)).await;
    let target = server.grpc_addr.to_string();
    let token = path_str(&token);
    let bad = reviews_file(dir.path(), "bad.jsonl", &[("a", "you idiot"), ("b", "   "), ("c", "great product")]);
    for client in BOTH {
        // No token: UNAUTHENTICATED once, with the advice.
        let run = run(client, &["--target", &target], &[]);
        assert_eq!(run.code, 1, "{client:?}: {}", run.stderr);
        assert!(run.stderr.contains("failed: UNAUTHENTICATED:"), "{client:?}: {}", run.stderr);
        assert!(run.stderr.contains("not retried: give the token"), "{client:?}: {}", run.stderr);
        assert!(run.retries().is_empty(), "{client:?}: {}", run.stderr);

        // The token from a file; the sample reviews are served.
        let ok = self::run(client, &["--target", &target, "--token-file", &token], &[]);
        assert_eq!((ok.code, ok.results.len()), (0, 6), "{client:?}: {}", ok.stderr);

        // A whitespace-only text in a batch: INVALID_ARGUMENT naming the field, not retried.
        let run = self::run(client, &["--target", &target, "--token-file", &token, "--reviews", &bad], &[]);
        assert_eq!((run.code, run.results.len()), (1, 0), "{client:?}: {}", run.stderr);
        assert!(run.stderr.contains("failed: INVALID_ARGUMENT: reviews[1].text:"), "{client:?}: {}", run.stderr);
        assert!(run.retries().is_empty(), "{client:?}: {}", run.stderr);

        // Over a stream, one review per message (token from a variable): the bad message gets
        // its error and the stream goes on.
        let args =
            ["--target", &target, "--token-env", "MODSERVE_TOKEN", "--reviews", &bad, "--batch-size", "1", "--stream"];
        let run = self::run(client, &args, &[("MODSERVE_TOKEN", "ingest-token")]);
        assert_eq!(run.code, 1, "{client:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("message batch-1 failed: INVALID_ARGUMENT: reviews[0].text:"),
            "{client:?}: {}",
            run.stderr
        );
        let ids: Vec<&str> = run.results.iter().map(|r| r["review_id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["a", "a", "c", "c"], "{client:?}");
    }
    server.stop().await;
}

/// Fills a queue of one: a call whose model holds its worker until `faults.release()` (a fault
/// injected through its backend), then one more waiting behind it; returns once a probe is
/// refused RESOURCE_EXHAUSTED, with the calls.
async fn fill_queue(server: &TestServer, faults: &Faults, model: &str) -> Vec<tokio::task::JoinHandle<()>> {
    let channel = server.channel().await;
    let mut calls = Vec::new();
    faults.hold_again();
    faults.on_word(model, "huge", Action::Hold);
    let begun = faults.begun();
    let mut client = ModerationClient::new(channel.clone());
    calls.push(tokio::spawn(async move {
        client.classify(request(vec![review("stall", "stall huge")])).await.expect("the stalled call is served");
    }));
    faults.wait_begun(begun + 1).await;
    for i in 0..50 {
        let mut client = ModerationClient::new(channel.clone());
        calls.push(tokio::spawn(async move {
            // A filler is served after the stall, or refused if the queue was already full.
            let _ = client.classify(request(vec![review(&format!("fill{i}"), "great product")])).await;
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut probe = ModerationClient::new(channel.clone());
        match probe.classify(request(vec![review("probe", "great product")])).await {
            Err(status) if status.code() == Code::ResourceExhausted => return calls,
            Err(status) => panic!("the probe got {status:?}"),
            Ok(_) => {}
        }
    }
    panic!("a queue of one never filled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_retry_resource_exhausted_with_backoff_until_served() {
    let _guard = exclusive().await;
    tokio::task::block_in_place(warm_up);
    let (server, faults) = TestServer::start_faulty(config(
        r#"
[models.tiny-fraud-v2]
path = "tests/fixtures/tiny-fraud-v2"
[models.tiny-fraud-v2.batching]
queue_capacity = 1
max_batch_size = 1
[tasks.fraud]
live = "tiny-fraud-v2"
"#,
    ))
    .await;
    let base = server.scrape().await;
    let target = server.grpc_addr.to_string();
    for (client, stream) in
        [(Client::Rust, false), (Client::Python, false), (Client::Rust, true), (Client::Python, true)]
    {
        // The worker is held until the client says it was refused and will retry, however long
        // the client takes to start; then the queue drains and a retry is served.
        // On a stream the refusal is the message's error, and the message is retried unary.
        let calls = fill_queue(&server, &faults, "tiny-fraud-v2").await;
        let mut args = vec!["--target", target.as_str(), "--attempts", "20", "--deadline", "10"];
        if stream {
            args.push("--stream");
        }
        let run = run_watching(client, &args, &[], |line| {
            if line.starts_with("retry ") {
                faults.release();
            }
        });
        // Also when the client never retried, so that the held call ends and the test fails
        // on its assertions, not 30 s later.
        faults.release();
        assert_eq!(run.code, 0, "{client:?} stream={stream}: {}", run.stderr);
        assert_eq!(run.results.len(), 3, "{client:?}: the sample reviews, one task");
        let retries = run.retries();
        assert!(!retries.is_empty(), "{client:?} was never refused: {}", run.stderr);
        assert!(retries[0].starts_with("retry 1/19 after RESOURCE_EXHAUSTED:"), "{client:?}: {}", retries[0]);
        assert!(retries.iter().all(|r| r.contains("RESOURCE_EXHAUSTED")), "{client:?}: {}", run.stderr);
        for call in calls {
            call.await.unwrap();
        }
    }
    let refused = delta(
        &base,
        &server.scrape().await,
        "modserve_requests_total",
        &[("code", "RESOURCE_EXHAUSTED"), ("method", "ClassifyStream")],
    );
    assert_eq!(refused, 2.0, "each stream's one message was refused once, then retried unary");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_give_up_on_unavailable_after_bounded_attempts() {
    let _shared = shared().await;
    tokio::task::block_in_place(warm_up);
    // Nothing listens on this port: every attempt is UNAVAILABLE.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let target = format!("127.0.0.1:{port}");
    for client in BOTH {
        // A unary call, and a whole stream (reopened for the unanswered messages each time).
        for (mode, failed) in [(None, "failed: UNAVAILABLE:"), (Some("--stream"), "stream failed: UNAVAILABLE:")] {
            let run = run(client, &[&["--target", &target, "--attempts", "3"][..], mode.as_slice()].concat(), &[]);
            assert_eq!(run.code, 1, "{client:?} {mode:?}: {}", run.stderr);
            let retries = run.retries();
            assert_eq!(retries.len(), 2, "{client:?} {mode:?}: {}", run.stderr);
            assert!(retries[1].starts_with("retry 2/2 after UNAVAILABLE:"), "{client:?} {mode:?}: {}", run.stderr);
            assert!(run.stderr.contains(failed), "{client:?} {mode:?}: {}", run.stderr);
            assert!(run.stderr.contains("(gave up after 3 attempts)"), "{client:?} {mode:?}: {}", run.stderr);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_do_not_retry_deadline_exceeded() {
    let _shared = shared().await;
    tokio::task::block_in_place(warm_up);
    let (server, faults) = TestServer::start_faulty(config(
        r#"
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[tasks.abuse]
live = "tiny-abuse-v2"
"#,
    ))
    .await;
    let target = server.grpc_addr.to_string();
    let channel = server.channel().await;
    for client in BOTH {
        // The worker is held (a fault injected through its backend) until the client has
        // finished, however long it takes to start; its call waits behind it with a 0.3 s
        // deadline.
        faults.hold_again();
        faults.on_word("tiny-abuse-v2", "huge", Action::Hold);
        let begun = faults.begun();
        let mut stalled = ModerationClient::new(channel.clone());
        let stall = tokio::spawn(async move {
            let text = "stall huge you idiot";
            stalled.classify(request(vec![review("stall", text)])).await.expect("the stalled call is served");
        });
        faults.wait_begun(begun + 1).await;
        let run = run(client, &["--target", &target, "--deadline", "0.3"], &[]);
        faults.release();
        assert_eq!(run.code, 1, "{client:?}: {}", run.stderr);
        assert!(run.stderr.contains("failed: DEADLINE_EXCEEDED:"), "{client:?}: {}", run.stderr);
        assert!(run.stderr.contains("not retried: raise --deadline"), "{client:?}: {}", run.stderr);
        assert!(run.retries().is_empty(), "{client:?}: {}", run.stderr);
        stall.await.unwrap();
    }
    server.stop().await;
}

/// A CA (PEM) and a server certificate and key it signed for localhost and 127.0.0.1.
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "clients test CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    (ca_pem, leaf.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_speak_tls_with_a_ca_file() {
    let _shared = shared().await;
    tokio::task::block_in_place(warm_up);
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates();
    for (name, body) in [("ca.crt", &ca), ("server.crt", &cert), ("server.key", &key)] {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    let body = format!(
        "{BASIC}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        path_str(&dir.path().join("server.crt")),
        path_str(&dir.path().join("server.key")),
    );
    let server = modserve::app::Server::start(config(&body)).await.expect("starts with TLS");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("localhost");
    let endpoint = tonic::transport::Channel::from_shared(format!("https://{}", server.grpc_addr)).unwrap();
    wait_serving(endpoint.tls_config(tls).unwrap().connect().await.expect("TLS connect")).await;
    let target = format!("localhost:{}", server.grpc_addr.port());
    let ca_file = path_str(&dir.path().join("ca.crt"));
    for client in BOTH {
        let run = run(client, &["--target", &target, "--ca-file", &ca_file, "--stream"], &[]);
        assert_eq!((run.code, run.results.len()), (0, 6), "{client:?}: {}", run.stderr);
        // Without --ca-file a client speaks plaintext to the TLS port: no answer, exit 1.
        let run = self::run(client, &["--target", &target, "--attempts", "2"], &[]);
        assert_eq!(run.code, 1, "{client:?}: plaintext to a TLS port: {}", run.stderr);
    }
    server.shutdown();
    server.wait().await.unwrap();
}
