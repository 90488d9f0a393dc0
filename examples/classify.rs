//! A modserve client to copy (Rust, tonic): classify reviews in batches, unary or over one
//! stream, with deadlines and the retry policy the README recommends. The same flags, output and
//! behaviour as `examples/python/classify.py`:
//!
//! ```text
//! cargo run --example classify -- --target 127.0.0.1:50051 [--reviews reviews.jsonl] [--stream]
//!     [--batch-size 32] [--deadline 2.0] [--attempts 5]
//!     [--token-file PATH | --token-env NAME] [--ca-file PATH]
//! ```
//!
//! Reviews are JSON lines (`{"id": "r1", "text": "...", "title": "..."}`); without --reviews a
//! few sample reviews are sent. Each review's result per task is printed as one JSON line on
//! stdout; retries and failures go to stderr. Exit status: 0 every review classified, 1 some call
//! or stream message failed (after its retries), 2 a usage error.
//!
//! | status | what the client does |
//! |---|---|
//! | RESOURCE_EXHAUSTED, UNAVAILABLE | retried: exponential backoff with full jitter, at most `--attempts` tries in all, each with its own deadline |
//! | INVALID_ARGUMENT | not retried: the message names the field to fix |
//! | DEADLINE_EXCEEDED | not retried: the deadline is the caller's budget; retrying at once adds load where the server is already slow |
//! | UNAUTHENTICATED | not retried: give the token (`--token-file` or `--token-env`) |
//! | PERMISSION_DENIED | not retried: this token may not call this service |
//! | OUT_OF_RANGE | not retried: the message is over the server's size limit; send smaller batches |
//! | INTERNAL and anything else | not retried: the same request would fail the same way |
//!
//! The message types come from this crate (`modserve::serving::grpc::pb`); a client in its own
//! crate generates the same ones from `proto/` with `tonic-prost-build` in its `build.rs`.

use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use modserve::serving::grpc::pb;
use modserve::serving::grpc::pb::moderation_client::ModerationClient;
use serde::Deserialize;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request, Status};

/// Backoff: the n-th retry waits a random time in [0, min(CAP, BASE * 2^(n-1))] ("full
/// jitter"), so clients that failed together do not come back together.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

const SAMPLE_REVIEWS: [(&str, &str); 3] = [
    ("r1", "You are an idiot and a liar."),
    ("r2", "Great blender, arrived fast, works as described."),
    ("r3", "WIN a FREE iPhone!!! visit www.cheap-deals.biz or call 555-0199 now"),
];

#[derive(Debug, Parser)]
#[command(about = "Classify reviews with modserve, retrying RESOURCE_EXHAUSTED and UNAVAILABLE")]
struct Options {
    /// host:port of the gRPC listener.
    #[arg(long, default_value = "127.0.0.1:50051")]
    target: String,
    /// JSON lines of reviews (default: three samples).
    #[arg(long)]
    reviews: Option<PathBuf>,
    /// Send every batch over one ClassifyStream.
    #[arg(long)]
    stream: bool,
    /// Reviews per request (the server's limit: limits.max_reviews_per_request).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Seconds per attempt (a call, or a whole stream), e.g. 2 or 0.5.
    #[arg(long, default_value = "2", value_parser = seconds)]
    deadline: Duration,
    /// Tries in all for RESOURCE_EXHAUSTED and UNAVAILABLE.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    attempts: u32,
    /// File holding the bearer token (server.moderation_token_file).
    #[arg(long, conflicts_with = "token_env")]
    token_file: Option<PathBuf>,
    /// Environment variable holding the bearer token.
    #[arg(long)]
    token_env: Option<String>,
    /// PEM CA of the server's certificate: use TLS.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

/// A positive number of seconds.
fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(Duration::from_secs_f64(v)),
        _ => Err("a positive number of seconds, e.g. 2 or 0.5".into()),
    }
}

#[derive(Deserialize)]
struct ReviewLine {
    id: String,
    text: String,
    title: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let opts = Options::parse();
    let client = match Client::connect(&opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("classify: {e}");
            return ExitCode::from(2);
        }
    };
    let requests = match read_reviews(&opts) {
        Ok(reviews) => batches(reviews, opts.batch_size as usize),
        Err(e) => {
            eprintln!("classify: {e}");
            return ExitCode::from(2);
        }
    };
    let ok = if opts.stream { client.classify_stream(requests).await } else { client.classify_unary(requests).await };
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

// === The retry policy ===

fn retryable(code: Code) -> bool {
    matches!(code, Code::ResourceExhausted | Code::Unavailable)
}

/// What the client did about a final failure, by code.
fn advice(code: Code, attempts: u32) -> String {
    match code {
        Code::ResourceExhausted | Code::Unavailable => format!("gave up after {attempts} attempts"),
        Code::InvalidArgument => "not retried: fix the field named".into(),
        Code::DeadlineExceeded => "not retried: raise --deadline or send smaller batches".into(),
        Code::Unauthenticated => "not retried: give the token with --token-file or --token-env".into(),
        Code::PermissionDenied => "not retried: this token may not call this service".into(),
        Code::OutOfRange => "not retried: the message is too large; send smaller batches".into(),
        Code::Internal => "not retried: the server failed on this request; it keeps serving others".into(),
        _ => "not retried".into(),
    }
}

/// The gRPC name of a code, as the Python client and grpcurl print it.
fn code_name(code: Code) -> String {
    let debug = format!("{code:?}");
    let mut name = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    if code == Code::Ok { "OK".into() } else { name }
}

/// tonic enforces the `grpc-timeout` it sends, and reports its own expiry as CANCELLED "Timeout
/// expired": that is the deadline passing, so it becomes DEADLINE_EXCEEDED here.
fn deadline_status(status: Status) -> Status {
    if status.code() == Code::Cancelled && status.message() == tonic::TimeoutExpired(()).to_string() {
        Status::deadline_exceeded("the client's deadline passed")
    } else {
        status
    }
}

/// The wait before retry number `retry` (1-based): full jitter.
fn backoff(retry: u32) -> Duration {
    let ceiling = BACKOFF_CAP.min(BACKOFF_BASE.saturating_mul(1 << (retry - 1).min(16)));
    // A random fraction from std alone: RandomState is seeded per process and per instance.
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    ceiling.mul_f64((random >> 11) as f64 / (1u64 << 53) as f64)
}

/// Runs `attempt` until it succeeds, fails with a code that is not retried, or has been tried
/// `attempts` times; returns the result or the last status.
async fn with_retries<T, F, Fut>(attempts: u32, mut attempt: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut tried = 0;
    loop {
        tried += 1;
        match attempt().await {
            Err(status) if retryable(status.code()) && tried < attempts => {
                let wait = backoff(tried);
                eprintln!(
                    "retry {tried}/{} after {}: {}; waiting {:.3} s",
                    attempts - 1,
                    code_name(status.code()),
                    status.message(),
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
            }
            result => return result,
        }
    }
}

// === Requests and results ===

fn read_reviews(opts: &Options) -> Result<Vec<pb::Review>, String> {
    let Some(path) = &opts.reviews else {
        return Ok(SAMPLE_REVIEWS.iter().map(|(id, text)| review(id.to_string(), text.to_string(), None)).collect());
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("--reviews {}: {e}", path.display()))?;
    let lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    lines
        .map(|(n, line)| {
            let r: ReviewLine =
                serde_json::from_str(line).map_err(|e| format!("--reviews {} line {}: {e}", path.display(), n + 1))?;
            Ok(review(r.id, r.text, r.title))
        })
        .collect()
}

fn review(id: String, text: String, title: Option<String>) -> pb::Review {
    pb::Review { id, text, title, ..Default::default() }
}

fn batches(reviews: Vec<pb::Review>, size: usize) -> Vec<pb::ClassifyRequest> {
    reviews
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| pb::ClassifyRequest {
            reviews: chunk.to_vec(),
            tasks: vec![],
            request_id: format!("batch-{i}"),
            surface: None,
        })
        .collect()
}

fn print_results(response: &pb::ClassifyResponse) {
    for result in &response.results {
        for task in &result.tasks {
            let decision = pb::Decision::try_from(task.decision).unwrap_or(pb::Decision::Unspecified);
            let line = serde_json::json!({
                "review_id": result.review_id,
                "task": task.task,
                "decision": decision.as_str_name().trim_start_matches("DECISION_"),
                "model": task.model.as_ref().map(|m| m.name.as_str()).unwrap_or_default(),
            });
            println!("{line}");
        }
    }
}

fn report_failure(what: &str, status: &Status, attempts: u32) {
    let code = status.code();
    eprintln!("{what}failed: {}: {} ({})", code_name(code), status.message(), advice(code, attempts));
}

// === Client ===

/// A channel, the token and the options: everything one call needs.
struct Client {
    channel: Channel,
    /// `Bearer <token>`, when one is given.
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    deadline: Duration,
    attempts: u32,
}

impl Client {
    /// Lazily connected: a server that is down answers each call UNAVAILABLE, which is retried.
    fn connect(opts: &Options) -> Result<Client, String> {
        let scheme = if opts.ca_file.is_some() { "https" } else { "http" };
        let mut endpoint = Channel::from_shared(format!("{scheme}://{}", opts.target))
            .map_err(|e| format!("--target {}: {e}", opts.target))?
            .connect_timeout(opts.deadline);
        if let Some(ca) = &opts.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("--ca-file {}: {e}", ca.display()))?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|e| format!("--ca-file {}: {e}", ca.display()))?;
        }
        let token = match (&opts.token_file, &opts.token_env) {
            (Some(path), _) => {
                Some(std::fs::read_to_string(path).map_err(|e| format!("--token-file {}: {e}", path.display()))?)
            }
            (None, Some(name)) => Some(
                std::env::var(name).map_err(|_| format!("--token-env {name}: the environment variable is not set"))?,
            ),
            (None, None) => None,
        };
        let authorization = token
            .map(|t| format!("Bearer {}", t.trim()).parse().map_err(|_| "the token is not valid ASCII".to_string()))
            .transpose()?;
        Ok(Client { channel: endpoint.connect_lazy(), authorization, deadline: opts.deadline, attempts: opts.attempts })
    }

    /// A request with the deadline (sent as `grpc-timeout`) and the token.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.deadline);
        if let Some(value) = &self.authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
        request
    }

    /// One unary call with its deadline, also enforced here (the server stops at it too).
    async fn classify_once(&self, message: pb::ClassifyRequest) -> Result<pb::ClassifyResponse, Status> {
        let mut client = ModerationClient::new(self.channel.clone());
        match tokio::time::timeout(self.deadline, client.classify(self.request(message))).await {
            Ok(result) => result.map(|r| r.into_inner()).map_err(deadline_status),
            Err(_) => Err(Status::deadline_exceeded("the client's deadline passed")),
        }
    }

    async fn classify_unary(&self, requests: Vec<pb::ClassifyRequest>) -> bool {
        let mut ok = true;
        for message in requests {
            match with_retries(self.attempts, || self.classify_once(message.clone())).await {
                Ok(response) => print_results(&response),
                Err(status) => {
                    report_failure("", &status, self.attempts);
                    ok = false;
                }
            }
        }
        ok
    }

    /// One ClassifyStream for every batch: one response per message, in order. A message
    /// answered with an error is retried on its own (unary) when its code is retryable; when
    /// the stream itself fails with a retryable status, the messages not yet answered are sent
    /// again on a new stream. The deadline covers each stream attempt as a whole.
    async fn classify_stream(&self, requests: Vec<pb::ClassifyRequest>) -> bool {
        let pending = std::cell::RefCell::new(std::collections::VecDeque::from(requests));
        let ok = std::cell::Cell::new(true);
        let one_stream = || async {
            let sent: Vec<pb::ClassifyRequest> = pending.borrow().iter().cloned().collect();
            let mut client = ModerationClient::new(self.channel.clone());
            let run = async {
                let mut responses = client.classify_stream(self.request(tokio_stream::iter(sent))).await?.into_inner();
                while let Some(response) = responses.message().await? {
                    let message = pending.borrow_mut().pop_front().expect("one response per message");
                    self.stream_answer(message, response, &ok).await;
                }
                Ok(())
            };
            match tokio::time::timeout(self.deadline, run).await {
                Ok(result) => result.map_err(deadline_status),
                Err(_) => Err(Status::deadline_exceeded("the client's deadline passed")),
            }
        };
        if let Err(status) = with_retries(self.attempts, one_stream).await {
            report_failure("stream ", &status, self.attempts);
            return false;
        }
        ok.get()
    }

    /// One answer on the stream: results, a retried message, or a failure.
    async fn stream_answer(
        &self,
        message: pb::ClassifyRequest,
        response: pb::ClassifyResponse,
        ok: &std::cell::Cell<bool>,
    ) {
        let Some(error) = response.error.as_ref().filter(|e| e.code != 0) else {
            print_results(&response);
            return;
        };
        let code = Code::from_i32(error.code);
        let id = message.request_id.clone();
        if !retryable(code) {
            eprintln!("message {id} failed: {}: {} ({})", code_name(code), error.message, advice(code, self.attempts));
            ok.set(false);
            return;
        }
        match with_retries(self.attempts, || self.classify_once(message.clone())).await {
            Ok(response) => print_results(&response),
            Err(status) => {
                report_failure(&format!("message {id} "), &status, self.attempts);
                ok.set(false);
            }
        }
    }
}
