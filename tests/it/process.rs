//! The `modserve` binary as an operator runs it: `check-config` on broken packages, refusing to
//! start on a broken model, graceful SIGTERM under load, and what the logs contain.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use tonic::Code;

/// Writes a config into a temp dir; package paths are absolute so it can live anywhere.
pub(crate) fn write_config(dir: &tempfile::TempDir, body: &str) -> std::path::PathBuf {
    let path = dir.path().join("modserve.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    let text = unbounded_shadows(&format!(
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nshutdown_grace = \"10s\"\n{body}"
    ));
    writeln!(f, "{text}").unwrap();
    path
}

fn one_model(name: &str) -> String {
    format!("[models.{name}]\npath = {:?}\n[tasks.abuse]\nlive = {name:?}\n", path_str(&fixture(name)))
}

#[test]
fn check_config_accepts_a_good_config() {
    let _shared = shared_blocking();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &one_model("tiny-abuse"));
    let out = modserve().arg("check-config").arg(&config).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("OK (1 models, 1 tasks)"), "{stdout}");
}

#[test]
fn check_config_names_every_broken_package_and_what_is_wrong() {
    let _shared = shared_blocking();
    let broken = [
        ("broken-corrupt-onnx", "model.onnx: ONNX Runtime cannot load the model"),
        ("broken-input-names", "graph input \"ids\" is not one the manifest declares"),
        ("broken-output-rank", "output \"probabilities\" has rank 3"),
        ("broken-label-count", "has 2 columns but there are 3 labels"),
        ("broken-missing-tokenizer", "tokenizer.json: cannot read"),
        ("broken-sha256", "model.onnx: sha256 mismatch"),
        ("broken-manifest", "lables"),
    ];
    let mut body = String::new();
    for (name, _) in &broken {
        body += &format!("[models.{name}]\npath = {:?}\n", path_str(&fixture(name)));
    }
    body += &one_model("tiny-abuse");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &body);
    let out = modserve().arg("check-config").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{} error(s)", broken.len())), "{stderr}");
    for (name, problem) in broken {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("models.{name}:")))
            .unwrap_or_else(|| panic!("no error for {name} in:\n{stderr}"));
        assert!(line.contains(problem), "{name}: {line:?} does not say {problem:?}");
        assert!(line.contains(&path_str(&fixture(name))), "{name}: the error names the file: {line}");
    }
}

#[test]
fn check_config_reports_config_errors_by_key() {
    let _shared = shared_blocking();
    let dir = tempfile::tempdir().unwrap();
    let config =
        write_config(&dir, "[batching]\nmax_batch_size = 0\nlong_job_nice = 20\n[tasks.abuse]\nlive = \"nope\"\n");
    let out = modserve().arg("check-config").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("batching.max_batch_size 0: must be 1..=4096"), "{stderr}");
    assert!(stderr.contains("batching.long_job_nice 20: must be 0..=19"), "{stderr}");
    assert!(stderr.contains("tasks.abuse.live: no model named \"nope\""), "{stderr}");
}

#[test]
fn serve_refuses_to_start_on_a_broken_model() {
    let _shared = shared_blocking();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &one_model("broken-sha256"));
    let out = modserve().arg("--config").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("broken-sha256/model.onnx: sha256 mismatch"), "{stderr}");
}

#[test]
fn serve_refuses_to_start_without_onnx_runtime() {
    let _shared = shared_blocking();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &one_model("tiny-abuse"));
    let out = modserve()
        .arg("--config")
        .arg(&config)
        .env("MODSERVE_ONNXRUNTIME_LIB", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot load ONNX Runtime from /nonexistent/libonnxruntime.so"), "{stderr}");
}

/// Starts the binary with JSON logs, reads the bound address from its "listening" line.
fn spawn_server(
    config: &std::path::Path,
) -> (std::process::Child, std::net::SocketAddr, std::thread::JoinHandle<String>) {
    let mut child =
        modserve().arg("--config").arg(config).arg("--log-format").arg("json").stderr(Stdio::piped()).spawn().unwrap();
    let (Listening { grpc: addr, .. }, reader) = read_logs(&mut child);
    (child, addr, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_calls_and_exits_zero() {
    let _shared = shared().await;
    let dir = tempfile::tempdir().unwrap();
    // write_config puts the body right after its [server] keys, so drain_delay lands there.
    let config = write_config(&dir, &format!("drain_delay = \"300ms\"\n{}", one_model("tiny-abuse")));
    let (child, addr, logs) = spawn_server(&config);
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    wait_serving(channel.clone()).await;
    let secret = "zebra-quartz-unicorn secret text";
    let signalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Load from 8 clients, each a bounded loop, until the server closes.
    let mut clients = Vec::new();
    for c in 0..8 {
        let mut client = modserve::serving::grpc::pb::moderation_client::ModerationClient::new(channel.clone());
        let (signalled, answered) = (signalled.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut after_signal) = (0, 0);
            for i in 0..5000 {
                let text = if i % 2 == 0 { "you idiot" } else { secret };
                match client.classify(request(vec![review(&format!("{c}-{i}"), text)])).await {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        let expected = if i % 2 == 0 { "REJECT" } else { "ALLOW" };
                        assert_eq!(decision_name(resp.results[0].tasks[0].decision), expected);
                        ok += 1;
                        answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        after_signal += usize::from(signalled.load(std::sync::atomic::Ordering::SeqCst));
                    }
                    // After the drain delay the server sends GOAWAY and closes: the client's
                    // transport reports it (UNAVAILABLE or CANCELLED, or, for a call that crossed
                    // the GOAWAY unprocessed, tonic's INTERNAL "GoAway ... NO_ERROR", which a gRPC
                    // client retries). Nothing else may fail.
                    Err(status) if matches!(status.code(), Code::Unavailable | Code::Cancelled) => break,
                    Err(status) if format!("{status:?}").contains("GoAway") => break,
                    Err(status) => panic!("unexpected failure during shutdown: {status:?}"),
                }
            }
            (ok, after_signal)
        }));
    }
    // Wait until every client has had answers (requests are flowing), then SIGTERM.
    for _ in 0..600 {
        if answered.load(std::sync::atomic::Ordering::SeqCst) >= 8 * 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = child.id() as i32;
    signalled.store(true, std::sync::atomic::Ordering::SeqCst);
    send_sigterm(pid);
    let mut total_ok = 0;
    let mut total_after_signal = 0;
    for c in clients {
        let (ok, after_signal) = c.await.unwrap();
        total_ok += ok;
        total_after_signal += after_signal;
    }
    let status = tokio::task::spawn_blocking(move || {
        let mut child = child;
        child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(total_ok > 0, "load was served before the signal");
    assert!(total_after_signal > 0, "calls during the drain delay were served, not refused");
    let logs = logs.join().unwrap();
    assert!(logs.contains("received signal") && logs.contains("\"stopped\""), "{logs}");
    assert!(!logs.contains("zebra-quartz-unicorn"), "review text leaked into the logs");
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

/// SIGTERM through kill(1): no libc dependency just for tests.
pub(crate) fn send_sigterm(pid: i32) {
    let status = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -TERM {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let _shared = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let models = format!(
        "[models.tiny-abuse]\npath = {:?}\n[models.tiny-abuse-v2]\npath = {:?}\n",
        path_str(&fixture("tiny-abuse")),
        path_str(&fixture("tiny-abuse-v2"))
    );
    let config = write_config(&dir, &format!("watch_config = false\n{models}[tasks.abuse]\nlive = \"tiny-abuse\"\n"));
    let (mut child, addr, logs) = spawn_server(&config);
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    wait_serving(channel.clone()).await;
    let mut client = modserve::serving::grpc::pb::moderation_client::ModerationClient::new(channel.clone());
    let live =
        |resp: modserve::serving::grpc::pb::ClassifyResponse| resp.results[0].tasks[0].model.clone().unwrap().name;
    let resp = client.classify(request(vec![review("a", "this is dumb")])).await.unwrap().into_inner();
    assert_eq!(live(resp), "tiny-abuse");

    let text = std::fs::read_to_string(&config).unwrap().replace("live = \"tiny-abuse\"", "live = \"tiny-abuse-v2\"");
    std::fs::write(&config, text).unwrap();
    let status = Command::new("kill").arg("-HUP").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    // Bounded wait for the reload to land.
    let mut now_live = String::new();
    for _ in 0..200 {
        let resp = client.classify(request(vec![review("a", "this is dumb")])).await.unwrap().into_inner();
        now_live = live(resp);
        if now_live == "tiny-abuse-v2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(now_live, "tiny-abuse-v2");
    send_sigterm(child.id() as i32);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success());
    let logs = logs.join().unwrap();
    assert!(logs.contains("SIGHUP: reloading the config") && logs.contains("\"trigger\":\"signal\""), "{logs}");
}

/// Review text never reaches the logs: the binary at debug level (stricter than the default,
/// info) is driven through every path a review takes: answered, streamed, rejected by each
/// validation rule, oversize, past its deadline, shadowed with disagreements logged (text
/// hashed), during a reload; then the whole log is searched for every text sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_review_text_reaches_the_logs_on_any_path() {
    let _shared = shared().await;
    use modserve::serving::grpc::pb::moderation_client::ModerationClient;
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "[limits]\nmax_text_bytes = 2000\nmax_reviews_per_request = 4\n\
         [shadow.disagreement_log]\npath = {:?}\nsample_rate = 1.0\n\
         [models.tiny-abuse]\npath = {:?}\n[models.tiny-abuse-v2]\npath = {:?}\n\
         [tasks.abuse]\nlive = \"tiny-abuse\"\nshadows = [{{ model = \"tiny-abuse-v2\", sample_rate = 1.0 }}]\n",
        path_str(&dir.path().join("disagreements.jsonl")),
        path_str(&fixture("tiny-abuse")),
        path_str(&fixture("tiny-abuse-v2")),
    );
    let config = write_config(&dir, &body);
    let mut cmd = modserve();
    cmd.env("RUST_LOG", "debug").arg("--config").arg(&config).arg("--log-format").arg("json");
    let mut child = KillOnDrop(cmd.stderr(Stdio::piped()).spawn().unwrap());
    let (Listening { grpc: addr, .. }, logs) = read_logs(&mut child.0);
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    wait_serving(channel.clone()).await;
    let mut client = ModerationClient::new(channel.clone());

    // Every text carries a marker no log line would contain by chance.
    let mut sent = Vec::new();
    let mut text = |what: &str| {
        let t = format!("qxmarker{} {what}", sent.len());
        sent.push(format!("qxmarker{}", sent.len()));
        t
    };
    // Answered, including texts the two models disagree on ("you are stupid", "this is dumb":
    // golden fixtures, sent as they are so the disagreement happens) and a titled one.
    let golden: Vec<String> = golden().into_iter().filter(|g| g.model == "tiny-abuse").map(|g| g.text).collect();
    for g in &golden {
        client.classify(request(vec![review("g", g)])).await.unwrap();
    }
    client.classify(request(vec![review("m", &text("marked"))])).await.unwrap();
    let mut titled = review("t", &text("body"));
    titled.title = Some(text("title"));
    client.classify(request(vec![titled])).await.unwrap();
    // Each validation failure, with text in the request.
    let invalid = [
        request(vec![review("", &text("no id"))]),
        request(vec![review("long", &format!("{} {}", text("oversize"), "x".repeat(2100)))]),
        request((0..5).map(|i| review(&i.to_string(), &text("too many"))).collect()),
        modserve::serving::grpc::pb::ClassifyRequest {
            tasks: vec!["nope".into()],
            ..request(vec![review("u", &text("unknown task"))])
        },
        request(vec![review("dup", &text("duplicate one")), review("dup", &text("duplicate two"))]),
        request(vec![modserve::serving::grpc::pb::Review {
            rating: Some(f32::NAN),
            ..review("nan", &text("nan rating"))
        }]),
    ];
    for req in invalid {
        let status = client.classify(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    // Past its deadline.
    let mut late = tonic::Request::new(request(vec![review("late", &text("deadline"))]));
    late.set_timeout(Duration::from_nanos(1));
    let _ = client.classify(late).await;
    // Streamed, with one bad message in the stream.
    let messages = vec![request(vec![review("s1", &text("stream"))]), request(vec![review("", &text("stream bad"))])];
    let mut stream = client.classify_stream(tokio_stream::iter(messages)).await.unwrap().into_inner();
    while stream.message().await.unwrap().is_some() {}
    // A reload, then traffic again.
    let mut admin = modserve::serving::grpc::pb::admin_client::AdminClient::new(channel.clone());
    admin.reload(modserve::serving::grpc::pb::ReloadRequest {}).await.unwrap();
    client.classify(request(vec![review("after", &text("after reload"))])).await.unwrap();

    // Until the shadow's disagreements on the golden texts reach the log, then stop.
    let disagreement_log = dir.path().join("disagreements.jsonl");
    for _ in 0..400 {
        if std::fs::metadata(&disagreement_log).is_ok_and(|m| m.len() > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    send_sigterm(child.0.id() as i32);
    let status = tokio::task::spawn_blocking(move || child.0.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status:?}");
    let logs = logs.join().unwrap();
    assert!(logs.lines().count() > 20, "debug logging was on: {logs}");
    assert!(logs.contains("request failed"), "the failures were logged (without their text): {logs}");
    for marker in &sent {
        assert!(!logs.contains(marker.as_str()), "review text {marker} leaked into the logs:\n{logs}");
    }
    for g in &golden {
        assert!(!logs.contains(g.as_str()), "review text {g:?} leaked into the logs");
    }
    // The disagreement log holds hashes, not text.
    let disagreements = std::fs::read_to_string(&disagreement_log).unwrap();
    assert!(!disagreements.is_empty(), "the models disagreed on some golden texts");
    assert!(!disagreements.contains("qxmarker"), "{disagreements}");
}

/// A child process killed when the test ends, even by a panic: a leftover server would keep
/// the test harness's output pipe open.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// kill -9 in the middle of shadowed load: the restarted server serves again, and every line of
/// the disagreement log parses (a torn last line from the kill is cut back on restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_restarts_cleanly_with_no_torn_log_line() {
    let _shared = shared().await;
    use modserve::serving::grpc::pb::moderation_client::ModerationClient;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("disagreements.jsonl");
    let body = format!(
        "[shadow]\nlive_pressure_jobs = 1000\n\
         [shadow.disagreement_log]\npath = {:?}\nsample_rate = 1.0\ninclude_text = true\n\
         [models.tiny-abuse]\npath = {:?}\n[models.tiny-abuse-v2]\npath = {:?}\n\
         [tasks.abuse]\nlive = \"tiny-abuse\"\nshadows = [{{ model = \"tiny-abuse-v2\", sample_rate = 1.0 }}]\n",
        path_str(&log),
        path_str(&fixture("tiny-abuse")),
        path_str(&fixture("tiny-abuse-v2")),
    );
    let config = write_config(&dir, &body);
    // Texts the two models decide differently, padded so lines are long and writes span pages.
    let padding = " great product".repeat(40);
    let texts = [format!("you are stupid{padding}"), format!("this is dumb{padding}")];
    for round in 0..2 {
        let mut cmd = modserve();
        cmd.arg("--config").arg(&config).arg("--log-format").arg("json");
        let mut child = KillOnDrop(cmd.stderr(Stdio::piped()).spawn().unwrap());
        let (Listening { grpc: addr, .. }, _logs) = read_logs(&mut child.0);
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        wait_serving(channel.clone()).await;
        let mut client = ModerationClient::new(channel.clone());
        let answer = client.classify(request(vec![review("first", &texts[0])])).await.expect("serves after (re)start");
        assert_eq!(answer.into_inner().results.len(), 1);
        if round == 1 {
            break;
        }
        // Load from 4 callers, then SIGKILL while it runs.
        let mut callers = Vec::new();
        for c in 0..4 {
            let mut client = ModerationClient::new(channel.clone());
            let texts = texts.clone();
            callers.push(tokio::spawn(async move {
                for i in 0..100_000 {
                    let reviews = (0..8).map(|k| review(&format!("{c}-{i}-{k}"), &texts[k % 2])).collect();
                    if client.classify(request(reviews)).await.is_err() {
                        break;
                    }
                }
            }));
        }
        // Until the log has grown past a few writes.
        for _ in 0..200 {
            if std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) > 256 * 1024 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        drop(child); // SIGKILL
        for c in callers {
            c.await.unwrap();
        }
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() > 100, "the load wrote disagreements: {} lines", text.lines().count());
    assert!(text.is_empty() || text.ends_with('\n'));
    for (i, line) in text.lines().enumerate() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("line {i} does not parse ({e}): {line}"));
    }
}
