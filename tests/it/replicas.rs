//! Three replicas as an operator runs them: three `modserve` processes on loopback behind nginx
//! (the Debian package; `grpc_pass` to an upstream of the three) and one real Prometheus scraping
//! all three with `deploy/prometheus/modserve-rules.yml`. One test, four proofs, in order:
//!
//! 1. Sampling is the same on every replica: the same review ids, sent to each replica directly,
//!    put exactly the same ids in the shadow's sample on all three (read back, id by id, from
//!    each replica's disagreement log), and those are the ids `modserve::shadow::sampled` picks.
//! 2. The recording rule's agreement ratio, summed over the three, equals the ratio computed from
//!    the answers: the live answers (through nginx and from proof 1) against the candidate's
//!    answers (a server with the shadow model live), counting only the sampled reviews.
//! 3. A rolling restart (SIGTERM, wait for exit, start again on the same ports, wait for
//!    SERVING and for nginx to send it calls again, next) under load through nginx loses no
//!    call: every call ends in a valid answer. While a replica is down nginx gets connection
//!    refused and passes the call to the next one (checked in its error log). The client
//!    retries UNAVAILABLE (at most 20 times), as a gRPC retry policy would, because nginx
//!    cannot: modserve's UNAVAILABLE arrives as HTTP 200 with `grpc-status: 14`. The retries
//!    are counted by cause and printed. A stopping replica serves the calls that still reach
//!    it (health NOT_SERVING, then GOAWAY), so retries come from a replica still loading its
//!    models after a restart, or from a call whose connection sat in the closing listener's
//!    backlog: it is reset after nginx sent it, which nginx cannot retry and answers
//!    UNAVAILABLE itself (see `start_nginx`).
//! 4. A config change (promote tiny-abuse-v2 to live) rolled to the replicas one by one with
//!    `Admin/Reload` under load keeps every response valid, with no retry at all: each answer
//!    is the golden answer of the model it names, old or new, and Prometheus sees two config
//!    hashes mid-roll and one after.
//!
//! Needs `nginx` and `prometheus` (`scripts/setup --test` installs both).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::nginx::Nginx;
use crate::common::prometheus::Prometheus;
use crate::common::*;
use modserve::serving::grpc::pb;
use modserve::serving::grpc::pb::admin_client::AdminClient;
use modserve::serving::grpc::pb::moderation_client::ModerationClient;
use modserve::shadow::sampled;
use tonic::Code;
use tonic::transport::Channel;

/// The shadow's sample rate and salt (the salt defaults to the shadow model's name).
const RATE: f64 = 0.5;
const SALT: &str = "tiny-abuse-v2";
const RULE: &str =
    r#"modserve:shadow_agreement:ratio{task="abuse", live_model="tiny-abuse", shadow_model="tiny-abuse-v2"}"#;
/// Texts with golden answers from both models; "this is dumb" and "you are stupid" are the two
/// the models decide differently.
const TEXTS: [&str; 9] = [
    "great product",
    "you idiot",
    "this is dumb",
    "you are stupid",
    "what a moron",
    "i will kill you",
    "that could hurt",
    "You IDIOT!",
    "zorblax quixotic flummery",
];
const DISAGREEING: [&str; 2] = ["this is dumb", "you are stupid"];

/// Every replica's config file: same content in each replica's own folder, so the relative
/// disagreement log path gives each its own log while the file hash (`modserve_config_info`)
/// is the same on all three. Ports come from the command line. Watching is off so a change
/// rolls out only by `Admin/Reload`, replica by replica. `drain_delay` stays 0: nginx has no
/// active health checks, so a drain delay would only lengthen the time a stopping replica
/// answers UNAVAILABLE to traffic nginx keeps sending it. Shadow work is never shed (high
/// `live_pressure_jobs`, `max_delay` and breaker budget; every CPU as the CPU budget and no
/// headroom rule, by `unbounded_shadows`), so proofs 1 and 2 can count exactly even on a busy
/// machine.
fn replica_config(live: &str, shadow: &str) -> String {
    unbounded_shadows(&format!(
        "[server]\nshutdown_grace = \"10s\"\ndrain_delay = \"0s\"\nwatch_config = false\n\
         [shadow]\nlive_pressure_jobs = 1000\nmax_delay = \"30s\"\nbreaker_latency_budget = \"30s\"\n\
         [shadow.disagreement_log]\npath = \"disagreements.jsonl\"\n\
         [models.tiny-abuse]\npath = {:?}\n[models.tiny-abuse-v2]\npath = {:?}\n\
         [tasks.abuse]\nlive = {live:?}\nshadows = [{{ model = {shadow:?}, sample_rate = {RATE:?} }}]\n",
        path_str(&fixture("tiny-abuse")),
        path_str(&fixture("tiny-abuse-v2")),
    ))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap_or_else(|e| panic!("{addr}: {e}"))
}

// === the replicas ===

/// One modserve process. Its ports are kept across restarts (nginx and Prometheus know them).
struct Replica {
    name: String,
    dir: PathBuf,
    grpc: SocketAddr,
    metrics: SocketAddr,
    child: Option<Child>,
    logs: Option<std::thread::JoinHandle<String>>,
}

impl Replica {
    /// Starts a replica in `dir` on free ports (port 0, read back from its "listening" line).
    async fn start(name: &str, dir: PathBuf) -> Replica {
        let unset: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut r = Replica { name: name.into(), dir, grpc: unset, metrics: unset, child: None, logs: None };
        r.spawn().await;
        r
    }

    /// Spawns the process on `self.grpc` / `self.metrics` and waits for its "listening" line
    /// (not for SERVING: models may still be loading).
    async fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_modserve"))
            .env("MODSERVE_ONNXRUNTIME_LIB", ort_lib())
            .env_remove("RUST_LOG")
            .arg("--config")
            .arg(self.dir.join("modserve.toml"))
            .arg("--grpc-listen")
            .arg(self.grpc.to_string())
            .arg("--metrics-listen")
            .arg(self.metrics.to_string())
            .arg("--log-format")
            .arg("json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn modserve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut tx = Some(tx);
            let mut all = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("\"listening\"") {
                    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
                    let addr = |key: &str| v[key].as_str().unwrap().parse::<SocketAddr>().unwrap();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((addr("grpc"), addr("metrics")));
                    }
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        self.child = Some(child);
        let listening = tokio::time::timeout(Duration::from_secs(60), rx).await;
        let Ok(Ok((grpc, metrics))) = listening else {
            self.child.as_mut().unwrap().kill().ok();
            panic!("{} did not log its addresses:\n{}", self.name, reader.join().unwrap_or_default());
        };
        self.logs = Some(reader);
        (self.grpc, self.metrics) = (grpc, metrics);
    }

    async fn wait_serving(&self) {
        wait_serving(connect(self.grpc).await).await;
    }

    fn sigterm(&self) {
        signal(self.child.as_ref().expect("running").id(), "TERM");
    }

    /// Waits for the process to exit; returns its status and its whole log.
    async fn wait_exit(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
        let logs = self.logs.take().unwrap().join().unwrap();
        (status, logs)
    }

    async fn scrape(&self) -> String {
        scrape(self.metrics).await
    }

    /// Polls this replica's scrape until `name{labels}` reaches `want` (bounded: 30 s); returns
    /// the last value.
    async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
        let mut last = 0.0;
        for _ in 0..600 {
            last = metric(&self.scrape().await, name, labels).unwrap_or(0.0);
            if last >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        last
    }

    async fn classify_ok(&self) -> f64 {
        metric(&self.scrape().await, "modserve_requests_total", &[("method", "Classify"), ("code", "OK")])
            .unwrap_or(0.0)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// === nginx ===

/// nginx in the foreground from a temp dir, proxying gRPC (HTTP/2 without TLS) to `upstreams`.
///
/// - A new upstream connection per call (no upstream `keepalive`), so a replica that stopped
///   listening refuses the connection, and `grpc_next_upstream error` passes the call to the
///   next replica (`non_idempotent`: every gRPC call is a POST).
/// - nginx retries only while the call has not been sent: gRPC request bodies are not buffered,
///   so once a call is written to a replica nginx cannot take it back. A connection the kernel
///   accepted into a stopping replica's listen backlog is reset when that listener closes, after
///   nginx has written the call: nginx answers 502. `error_page` turns that (and any 502, 503,
///   504 of its own) into gRPC UNAVAILABLE, as nginx's gRPC gateway examples do, so a gRPC
///   client's retry policy applies; without it tonic sees an HTML body and reports INTERNAL.
/// - `max_fails=1 fail_timeout=2s`, nginx's passive health check (its defaults are 1 and 10s):
///   after a refused connection nginx sends that replica nothing for 2 s, which here covers the
///   restart and the model load. modserve listens before its models are loaded (health
///   NOT_SERVING, Classify UNAVAILABLE "models are still loading"), and nginx has no active
///   health check, so with `max_fails=0` a restarted replica gets calls while it loads: about
///   80 to 100 retries per run instead of a handful. Were the load slower than 2 s, those
///   retries would come back, counted, and the test would still pass.
/// - `keepalive_requests` raised so nginx does not GOAWAY the client's connection every 1000
///   calls mid-test.
/// - A known nginx bug can still lose a call here, rarely (twice in many runs, never in CI so
///   far): when a replica closes a connection that nginx has not finished sending a call on, and
///   nginx retries on another replica, Debian's nginx 1.22 can read the new connection's state
///   through a dangling pointer to the old one (nginx/nginx issue #1053) and log "upstream
///   violated connection flow control ... with window 0", answering the client with a reset. A
///   failure at the "calls lost during the rolling restart" assertion with that line in nginx's
///   errors is that bug, not a call modserve dropped.
async fn start_nginx(upstreams: &[SocketAddr]) -> (Nginx, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let servers: String =
        upstreams.iter().map(|u| format!("        server {u} max_fails=1 fail_timeout=2s;\n")).collect();
    let http = r#"    upstream modserve {
SERVERS    }
    server {
        listen ADDR http2;
        keepalive_requests 1000000;
        location / {
            grpc_pass grpc://modserve;
            grpc_next_upstream error timeout non_idempotent;
            grpc_next_upstream_tries TRIES;
            grpc_connect_timeout 2s;
            error_page 502 503 504 = @grpc_unavailable;
        }
        location @grpc_unavailable {
            default_type application/grpc;
            add_header grpc-status 14 always;
            add_header grpc-message "nginx: no replica answered" always;
            return 204;
        }
    }
"#
    .replace("SERVERS", &servers)
    .replace("TRIES", &upstreams.len().to_string());
    (Nginx::start(dir.path(), addr, 1024, &http).await, dir)
}

/// Calls `nginx` found `upstream` refusing its connection (and so passed to the next one).
fn refused(nginx: &Nginx, upstream: SocketAddr) -> usize {
    let needle = format!("upstream: \"grpc://{upstream}\"");
    nginx.error_log().lines().filter(|l| l.contains("Connection refused") && l.contains(&needle)).count()
}

// === answers ===

/// Golden answers: (model, text) -> (decision, probabilities).
type GoldenTable = HashMap<(String, String), (String, Vec<f32>)>;

fn golden_table() -> GoldenTable {
    golden()
        .into_iter()
        .filter(|g| g.model == "tiny-abuse" || g.model == "tiny-abuse-v2")
        .map(|g| ((g.model, g.text), (g.decision, g.probabilities)))
        .collect()
}

/// A response is valid when it answers every review of the request, in order, for the abuse
/// task, by one model, and each answer is that model's golden answer for the text. Returns the
/// model that answered.
fn check(req: &pb::ClassifyRequest, resp: &pb::ClassifyResponse, golden: &GoldenTable) -> Result<String, String> {
    if resp.error.is_some() || resp.results.len() != req.reviews.len() {
        return Err(format!("{} results for {} reviews: {resp:?}", resp.results.len(), req.reviews.len()));
    }
    let mut models = BTreeSet::new();
    for (review, result) in req.reviews.iter().zip(&resp.results) {
        let [task] = result.tasks.as_slice() else { return Err(format!("not one task: {result:?}")) };
        let model = task.model.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let Some((decision, probabilities)) = golden.get(&(model.clone(), review.text.clone())) else {
            return Err(format!("no golden answer for model {model:?} and text {:?}", review.text));
        };
        let scores: Vec<f32> = task.scores.iter().map(|s| s.score).collect();
        let close = scores.len() == probabilities.len()
            && scores.iter().zip(probabilities).all(|(a, e)| (a - e).abs() <= 1e-5 && a.is_finite());
        if result.review_id != review.id || task.task != "abuse" || decision_name(task.decision) != decision || !close {
            return Err(format!("{review:?} answered {result:?}; golden for {model}: {decision} {probabilities:?}"));
        }
        models.insert(model);
    }
    match models.len() {
        1 => Ok(models.into_iter().next().unwrap()),
        _ => Err(format!("one call answered by several models: {models:?}")),
    }
}

/// Agreement of live and candidate over the reviews in the shadow's sample, as the rule counts it.
#[derive(Default, Debug)]
struct Tally {
    compared: usize,
    agreed: usize,
}

impl Tally {
    fn add(&mut self, req: &pb::ClassifyRequest, live: &pb::ClassifyResponse, candidate: &pb::ClassifyResponse) {
        for ((review, l), c) in req.reviews.iter().zip(&live.results).zip(&candidate.results) {
            if sampled(&review.id, SALT, RATE) {
                self.compared += 1;
                self.agreed += usize::from(l.tasks[0].decision == c.tasks[0].decision);
            }
        }
    }
}

// === load ===

/// What the load saw; merged over its callers.
#[derive(Default, Debug)]
struct LoadStats {
    calls: u64,
    ok: u64,
    /// Calls that needed at least one retry, and retries by the UNAVAILABLE message's cause.
    retried_calls: u64,
    retries_shutting_down: u64,
    retries_loading: u64,
    /// nginx's own UNAVAILABLE (its 502 on a connection reset after the call was sent).
    retries_nginx: u64,
    retries_other: u64,
    other_messages: BTreeSet<String>,
    max_attempts: u32,
    /// Answers per model that gave them.
    models: BTreeMap<String, u64>,
    /// Calls that did not end in a valid answer (should stay empty).
    failures: Vec<String>,
}

impl LoadStats {
    fn retries(&self) -> u64 {
        self.retries_shutting_down + self.retries_loading + self.retries_nginx + self.retries_other
    }

    fn merge(&mut self, o: LoadStats) {
        self.calls += o.calls;
        self.ok += o.ok;
        self.retried_calls += o.retried_calls;
        self.retries_shutting_down += o.retries_shutting_down;
        self.retries_loading += o.retries_loading;
        self.retries_nginx += o.retries_nginx;
        self.retries_other += o.retries_other;
        self.other_messages.extend(o.other_messages);
        self.max_attempts = self.max_attempts.max(o.max_attempts);
        for (m, n) in o.models {
            *self.models.entry(m).or_default() += n;
        }
        self.failures.extend(o.failures);
    }
}

/// Closed-loop callers through nginx until stopped. Each call: two reviews with golden texts,
/// ids unique to the call, a 10 s deadline. On UNAVAILABLE a call is retried up to
/// `max_retries` times with a growing backoff (a gRPC retry policy's behaviour: 20 ms more each
/// time, 4.2 s over 20 retries, longer than nginx's 2 s `fail_timeout`); any other error, or an
/// answer that is not valid, is a failure. With 5 ms steps (1 s over 20 retries) one CI run lost
/// 12 calls: nginx saw connections to all three replicas close within one second (4 times
/// "upstream prematurely closed connection"), marked every replica failed for 2 s and answered
/// "no live upstreams" faster than the retries waited.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    callers: Vec<tokio::task::JoinHandle<LoadStats>>,
}

impl Load {
    fn start(
        channel: &Channel,
        phase: &'static str,
        callers: usize,
        max_retries: u32,
        golden: &Arc<GoldenTable>,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let callers = (0..callers)
            .map(|c| {
                let (stop, ok, golden) = (stop.clone(), ok.clone(), golden.clone());
                let mut client = ModerationClient::new(channel.clone());
                tokio::spawn(async move {
                    let mut stats = LoadStats::default();
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let reviews =
                            (0..2).map(|k| review(&format!("{phase}-{c}-{i}-{k}"), TEXTS[(c + i + k) % TEXTS.len()]));
                        let req = request(reviews.collect());
                        i += 1;
                        stats.calls += 1;
                        let mut attempts = 0;
                        loop {
                            attempts += 1;
                            let mut call = tonic::Request::new(req.clone());
                            call.set_timeout(Duration::from_secs(10));
                            match client.classify(call).await {
                                Ok(resp) => {
                                    match check(&req, &resp.into_inner(), &golden) {
                                        Ok(model) => {
                                            stats.ok += 1;
                                            *stats.models.entry(model).or_default() += 1;
                                            ok.fetch_add(1, Ordering::Relaxed);
                                        }
                                        Err(e) => stats.failures.push(e),
                                    }
                                    break;
                                }
                                Err(s) if s.code() == Code::Unavailable && attempts <= max_retries => {
                                    if s.message().contains("shutting down") {
                                        stats.retries_shutting_down += 1;
                                    } else if s.message().contains("still loading") {
                                        stats.retries_loading += 1;
                                    } else if s.message().contains("nginx: no replica answered") {
                                        stats.retries_nginx += 1;
                                    } else {
                                        stats.retries_other += 1;
                                        stats.other_messages.insert(s.message().to_string());
                                    }
                                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempts))).await;
                                }
                                Err(s) => {
                                    stats
                                        .failures
                                        .push(format!("call {phase}-{c}-{i} after {attempts} attempt(s): {s:?}"));
                                    break;
                                }
                            }
                        }
                        stats.retried_calls += u64::from(attempts > 1);
                        stats.max_attempts = stats.max_attempts.max(attempts);
                    }
                    stats
                })
            })
            .collect();
        Load { stop, ok, callers }
    }

    /// Waits (bounded: 60 s) until `n` more calls have been answered validly.
    async fn wait_answers(&self, n: u64) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        for _ in 0..1200 {
            if self.ok.load(Ordering::Relaxed) >= target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the load did not get {n} more answers within 60 s");
    }

    async fn stop(self) -> LoadStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = LoadStats::default();
        for c in self.callers {
            all.merge(c.await.expect("load caller panicked"));
        }
        all
    }
}

/// The review ids in a replica's disagreement log.
fn logged_ids(log: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert_eq!(v["shadow"]["model"], "tiny-abuse-v2", "{l}");
            v["review_id"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_behind_nginx_sample_alike_aggregate_and_roll_without_losing_calls() {
    let _guard = exclusive().await;
    let started = Instant::now();
    let golden = Arc::new(golden_table());
    let root = tempfile::tempdir().unwrap();
    let mut replicas = Vec::new();
    for i in 0..3 {
        let dir = root.path().join(format!("replica-{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("modserve.toml"), replica_config("tiny-abuse", "tiny-abuse-v2")).unwrap();
        replicas.push(Replica::start(&format!("replica-{i}"), dir).await);
    }
    for r in &replicas {
        r.wait_serving().await;
    }
    // The candidate on its own (in-process), to compute the expected agreement from answers.
    let candidate_server = TestServer::start(config(
        "[models.tiny-abuse-v2]\npath = \"tests/fixtures/tiny-abuse-v2\"\n[tasks.abuse]\nlive = \"tiny-abuse-v2\"\n",
    ))
    .await;
    let mut candidate = candidate_server.client().await;
    let (nginx, _nginx_dir) = start_nginx(&replicas.iter().map(|r| r.grpc).collect::<Vec<_>>()).await;
    let prometheus = Prometheus::start(&replicas.iter().map(|r| r.metrics).collect::<Vec<_>>()).await;
    let via_nginx = connect(nginx.addr).await;
    let mut tally = Tally::default();

    // (1) The same ids sent to each replica directly: the same ids sampled on all three.
    let ids: Vec<String> = (0..120).map(|i| format!("same-{i}")).collect();
    let predicted: BTreeSet<String> = ids.iter().filter(|id| sampled(id, SALT, RATE)).cloned().collect();
    assert!(!predicted.is_empty() && predicted.len() < ids.len(), "rate {RATE} samples some ids, not all");
    let requests: Vec<pb::ClassifyRequest> = ids
        .chunks(8)
        .map(|chunk| request(chunk.iter().enumerate().map(|(k, id)| review(id, DISAGREEING[k % 2])).collect()))
        .collect();
    let mut candidate_answers = Vec::new();
    for req in &requests {
        candidate_answers.push(candidate.classify(req.clone()).await.unwrap().into_inner());
    }
    for r in &replicas {
        let mut client = ModerationClient::new(connect(r.grpc).await);
        for (req, c) in requests.iter().zip(&candidate_answers) {
            let live = client.classify(req.clone()).await.unwrap().into_inner();
            check(req, &live, &golden).unwrap();
            tally.add(req, &live, c);
        }
    }
    let shadow = |outcome| [("shadow_model", "tiny-abuse-v2"), ("outcome", outcome)];
    for r in &replicas {
        let (sampled_in, sampled_out) = (predicted.len() as f64, (ids.len() - predicted.len()) as f64);
        let compared = r.wait_metric("modserve_shadow_reviews_total", &shadow("compared"), sampled_in).await;
        let written =
            r.wait_metric("modserve_disagreement_log_lines_total", &[("outcome", "written")], sampled_in).await;
        let skipped = r.wait_metric("modserve_shadow_reviews_total", &shadow("sampled_out"), sampled_out).await;
        assert_eq!(compared, sampled_in, "{}: reviews compared", r.name);
        assert_eq!(skipped, sampled_out, "{}: reviews sampled out", r.name);
        assert_eq!(written, sampled_in, "{}: every sampled review disagreed and was logged", r.name);
        assert_eq!(logged_ids(&r.dir.join("disagreements.jsonl")), predicted, "{}: ids in its sample", r.name);
    }
    println!(
        "(1) sampling: {} of {} ids sampled, the same ids on all 3 replicas and as sampled() predicts",
        predicted.len(),
        ids.len()
    );

    // (2) Mixed traffic through nginx, spread over the three; then the recorded agreement ratio
    // over the three equals the one computed from the answers.
    let before: Vec<f64> = futures::future::join_all(replicas.iter().map(Replica::classify_ok)).await;
    let mut live = ModerationClient::new(via_nginx.clone());
    for i in 0..150 {
        let req = request(vec![review(&format!("mix-{i}"), TEXTS[i % TEXTS.len()])]);
        let l = live.classify(req.clone()).await.unwrap().into_inner();
        check(&req, &l, &golden).unwrap();
        let c = candidate.classify(req.clone()).await.unwrap().into_inner();
        tally.add(&req, &l, &c);
    }
    let after: Vec<f64> = futures::future::join_all(replicas.iter().map(Replica::classify_ok)).await;
    for (r, (b, a)) in replicas.iter().zip(before.iter().zip(&after)) {
        assert!(a > b, "{}: nginx sent it some of the mixed traffic ({b} -> {a})", r.name);
    }
    let expected = tally.agreed as f64 / tally.compared as f64;
    assert!(expected > 0.0 && expected < 1.0, "the mix has agreement and disagreement: {tally:?}");
    // Every sampled review compared on its replica (nothing shed: live_pressure_jobs is high and
    // the traffic is sequential), then the same total in Prometheus, then a rule evaluation
    // after that scrape.
    let mut compared = 0.0;
    for _ in 0..600 {
        let scrapes = futures::future::join_all(replicas.iter().map(Replica::scrape)).await;
        compared = scrapes
            .iter()
            .map(|s| metric(s, "modserve_shadow_reviews_total", &shadow("compared")).unwrap_or(0.0))
            .sum();
        if compared >= tally.compared as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(compared, tally.compared as f64, "reviews compared over the three replicas");
    let total = r#"sum(modserve_shadow_comparisons_total{shadow_model="tiny-abuse-v2"})"#;
    let (complete_at, in_prometheus) =
        prometheus.wait_for(total, tally.compared as f64).await.expect("comparisons in Prometheus");
    assert_eq!(in_prometheus, tally.compared as f64, "Prometheus's sum over the three replicas");
    let per_instance = prometheus
        .query_all(r#"sum by (instance) (modserve_shadow_comparisons_total{shadow_model="tiny-abuse-v2"})"#)
        .await;
    assert_eq!(per_instance.len(), 3, "comparisons from every replica: {per_instance:?}");
    let mut evaluated_at = 0.0;
    for _ in 0..300 {
        evaluated_at = prometheus.query(&format!("timestamp({RULE})")).await.map_or(0.0, |(_, v)| v);
        if evaluated_at > complete_at {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(evaluated_at > complete_at, "the rule was evaluated after the last comparison was scraped");
    let (_, recorded) = prometheus.query(RULE).await.expect("the recording rule has a value");
    println!(
        "(2) agreement: recorded {recorded} over 3 replicas, computed {expected} ({} of {} sampled reviews agree)",
        tally.agreed, tally.compared
    );
    assert!((recorded - expected).abs() < 1e-9, "recorded {recorded}, answers say {expected}");

    // (3) Rolling restart under load through nginx.
    let load = Load::start(&via_nginx, "restart", 6, 20, &golden);
    load.wait_answers(200).await;
    for r in replicas.iter_mut() {
        let refused_before = refused(&nginx, r.grpc);
        r.sigterm();
        let (status, logs) = r.wait_exit().await;
        assert!(status.success(), "{} exit status {status:?}:\n{logs}", r.name);
        assert!(logs.contains("\"stopped\""), "{}: a graceful stop:\n{logs}", r.name);
        // While it is down, nginx finds its port refusing and passes the calls on.
        for _ in 0..600 {
            if refused(&nginx, r.grpc) > refused_before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(refused(&nginx, r.grpc) > refused_before, "nginx saw {} refuse connections", r.name);
        r.spawn().await;
        r.wait_serving().await;
        // Traffic comes back to the new process before the next replica goes.
        let served = r.wait_metric("modserve_requests_total", &[("method", "Classify"), ("code", "OK")], 20.0).await;
        assert!(served >= 20.0, "{}: nginx sends calls to it again ({served})", r.name);
    }
    load.wait_answers(200).await;
    let restart = load.stop().await;
    let refused: usize = replicas.iter().map(|r| refused(&nginx, r.grpc)).sum();
    println!(
        "(3) rolling restart: {} calls, {} answered validly, {} failed; nginx passed on {refused} refused \
         connection(s); {} calls retried UNAVAILABLE ({} retries: {} shutting down, {} models loading, \
         {} from nginx after a reset, {} other {:?}; at most {} attempts for one call)",
        restart.calls,
        restart.ok,
        restart.failures.len(),
        restart.retried_calls,
        restart.retries(),
        restart.retries_shutting_down,
        restart.retries_loading,
        restart.retries_nginx,
        restart.retries_other,
        restart.other_messages,
        restart.max_attempts,
    );
    let nginx_errors: Vec<String> =
        nginx.error_log().lines().filter(|l| !l.contains("Connection refused")).map(String::from).collect();
    // What nginx could not retry, by kind (the text between the connection number and "client:").
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for line in &nginx_errors {
        let kind = line.split_once(": *").and_then(|(_, r)| r.split_once(' ')).map_or(line.as_str(), |(_, r)| r);
        *kinds.entry(kind.split(", client:").next().unwrap_or(kind)).or_default() += 1;
    }
    println!("(3) nginx errors other than refused connections: {kinds:?}");
    assert!(
        restart.failures.is_empty(),
        "calls lost during the rolling restart: {:#?}\nnginx errors other than refused connections: {nginx_errors:#?}",
        restart.failures
    );
    assert_eq!(restart.ok, restart.calls, "every call ended in a valid answer");
    assert_eq!(
        restart.retries_other, 0,
        "only UNAVAILABLE from modserve or nginx was retried: {:?}",
        restart.other_messages
    );

    // (4) A config change rolled replica by replica under load: no retries allowed.
    let promoted = replica_config("tiny-abuse-v2", "tiny-abuse");
    let load = Load::start(&via_nginx, "reload", 6, 0, &golden);
    load.wait_answers(100).await;
    let hashes = "count(count by (sha256) (modserve_config_info == 1))";
    let mut new_sha = String::new();
    for (n, r) in replicas.iter().enumerate() {
        std::fs::write(r.dir.join("modserve.toml"), &promoted).unwrap();
        let mut admin = AdminClient::new(connect(r.grpc).await);
        let outcome = admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner();
        assert!(outcome.applied && outcome.errors.is_empty(), "{}: {outcome:?}", r.name);
        assert_eq!(outcome.generation, 2, "{}: one reload since its start", r.name);
        new_sha = outcome.config_sha256;
        // This replica answers with the new live model; the ones not yet reloaded with the old.
        for (m, other) in replicas.iter().enumerate() {
            let req = request(vec![review(&format!("direct-{n}-{m}"), "this is dumb")]);
            let resp = ModerationClient::new(connect(other.grpc).await).classify(req.clone()).await.unwrap();
            let model = check(&req, &resp.into_inner(), &golden).unwrap();
            assert_eq!(
                model,
                if m <= n { "tiny-abuse-v2" } else { "tiny-abuse" },
                "{} after reloading {n}",
                other.name
            );
        }
        if n == 0 {
            // Mid-roll, Prometheus shows the fleet on two configs.
            let seen = prometheus.wait_for(hashes, 2.0).await.map(|(_, v)| v);
            assert_eq!(seen, Some(2.0), "two config hashes serving mid-roll");
        }
        load.wait_answers(100).await;
    }
    let seen = prometheus.wait_for(hashes, 1.0).await.map(|(_, v)| v);
    assert_eq!(seen, Some(1.0), "one config hash serving after the roll");
    let serving = prometheus.query_all("modserve_config_info == 1").await;
    assert!(serving.iter().all(|(labels, _, _)| labels["sha256"] == new_sha.as_str()), "{serving:?}");
    let successes = prometheus.wait_for("sum(modserve_config_last_reload_success)", 3.0).await.map(|(_, v)| v);
    assert_eq!(successes, Some(3.0), "every replica's last reload succeeded");
    let reload = load.stop().await;
    println!(
        "(4) rolling reload: {} calls, {} answered validly, {} failed, 0 retries allowed; answers by model {:?}",
        reload.calls,
        reload.ok,
        reload.failures.len(),
        reload.models
    );
    assert!(reload.failures.is_empty(), "invalid or failed calls during the rolling reload: {:#?}", reload.failures);
    assert_eq!(reload.ok, reload.calls);
    assert!(reload.models.contains_key("tiny-abuse") && reload.models.contains_key("tiny-abuse-v2"), "{reload:?}");
    // After the roll every replica answers with the promoted model.
    let mut client = ModerationClient::new(via_nginx.clone());
    for i in 0..30 {
        let req = request(vec![review(&format!("after-{i}"), TEXTS[i % TEXTS.len()])]);
        let resp = client.classify(req.clone()).await.unwrap().into_inner();
        assert_eq!(check(&req, &resp, &golden).unwrap(), "tiny-abuse-v2");
    }

    for r in &replicas {
        r.sigterm();
    }
    for r in replicas.iter_mut() {
        let (status, logs) = r.wait_exit().await;
        assert!(status.success(), "{}: {status:?}\n{logs}", r.name);
    }
    drop((nginx, prometheus));
    candidate_server.stop().await;
    println!("took {:.1} s", started.elapsed().as_secs_f64());
}
