//! The decision journal against the real server: every live decision of a real Classify call
//! is written with its fields (text hashed unless configured), compared shadow decisions too;
//! files rotate by size and keep `max_files`; a writer that cannot keep up drops and counts
//! records; SIGTERM loses none; a line torn by kill -9 is cut on restart; a verdict is counted
//! against the decision served, with no inference.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sha2::Digest;

use crate::common::*;
use crate::process::{KillOnDrop, send_sigterm, write_config};
use modserve::serving::grpc::pb;
use modserve::serving::grpc::pb::feedback_client::FeedbackClient;
use modserve::serving::grpc::pb::moderation_client::ModerationClient;

const RECORDS: &str = "modserve_journal_records_total";

fn journal_table(path: &Path, extra: &str) -> String {
    format!("[journal]\npath = {:?}\n{extra}\n", path_str(path))
}

/// Every whole line of the journal at `path` (the live file only), parsed: a write the reader
/// catches half done is read on the next poll.
fn lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    whole.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

/// Polls the journal until it holds at least `n` lines of `kind` (the writer is asynchronous);
/// 30 s at most. Returns them all.
async fn wait_lines(path: &Path, kind: &str, n: usize) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for _ in 0..600 {
        all = lines(path);
        if all.iter().filter(|l| l["kind"] == kind).count() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    all
}

fn sha256_hex(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn decision_lower(d: i32) -> String {
    decision_name(d).to_lowercase()
}

/// Two tasks, and a shadow on abuse that sees every review.
fn two_tasks_with_a_shadow(journal: &str) -> String {
    format!(
        "[shadow]\nlive_pressure_jobs = 1000\n{journal}\
         [models.tiny-abuse]\npath = \"tests/fixtures/tiny-abuse\"\n\
         [models.tiny-abuse-v2]\npath = \"tests/fixtures/tiny-abuse-v2\"\n\
         [models.tiny-fraud]\npath = \"tests/fixtures/tiny-fraud\"\n\
         [tasks.abuse]\nlive = \"tiny-abuse\"\nshadows = [{{ model = \"tiny-abuse-v2\", sample_rate = 1.0 }}]\n\
         [tasks.fraud]\nlive = \"tiny-fraud\"\n"
    )
}

/// One line per review and task with what the response said (model, policy, decision, scores),
/// the request id, and the text's sha256 but not the text; one shadow line per review compared,
/// with the live decision it was compared with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classify_call_is_journaled_per_review_and_task_with_the_text_hashed() {
    let _shared = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal/decisions.jsonl");
    let server = TestServer::start(config(&two_tasks_with_a_shadow(&journal_table(&path, "")))).await;
    let texts = ["you are an idiot", "lovely hotel, friendly staff"];
    let mut req = request(vec![review("r-1", texts[0]), review("r-2", texts[1])]);
    req.request_id = "req-42".into();
    let answer = server.client().await.classify(req).await.unwrap().into_inner();
    // The two kinds are queued independently (a shadow may land first): wait for both.
    wait_lines(&path, "decision", 4).await;
    let all = wait_lines(&path, "shadow", 2).await;
    let decisions: Vec<_> = all.iter().filter(|l| l["kind"] == "decision").collect();
    assert_eq!(decisions.len(), 4, "2 reviews x 2 tasks: {all:#?}");
    for (result, text) in answer.results.iter().zip(texts) {
        for task in &result.tasks {
            let line = decisions
                .iter()
                .find(|l| l["review_id"] == result.review_id.as_str() && l["task"] == task.task.as_str())
                .unwrap_or_else(|| panic!("no line for {} {}", result.review_id, task.task));
            let model = task.model.as_ref().unwrap();
            assert_eq!(line["request_id"], "req-42");
            assert_eq!(line["text_sha256"], sha256_hex(text));
            assert!(line.get("text").is_none(), "text is hashed unless include_text: {line}");
            assert_eq!(line["model"], model.name.as_str());
            assert_eq!(line["model_version"], model.version.as_str());
            assert_eq!(line["policy"], model.policy_name.as_str());
            assert_eq!(line["policy_version"], model.policy_version.as_str());
            assert_eq!(line["decision"], decision_lower(task.decision));
            for s in &task.scores {
                let journaled = line["scores"][&s.label].as_f64().unwrap();
                assert!((journaled - f64::from(s.score)).abs() < 1e-6, "{}: {journaled} vs {}", s.label, s.score);
            }
            assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
        }
    }
    // The shadow's decisions, from the golden scores of tiny-abuse-v2.
    let golden: HashMap<String, String> = golden()
        .into_iter()
        .filter(|g| g.model == "tiny-abuse-v2")
        .map(|g| (g.text, g.decision.to_lowercase()))
        .collect();
    for (result, text) in answer.results.iter().zip(texts) {
        let line = all
            .iter()
            .find(|l| l["kind"] == "shadow" && l["review_id"] == result.review_id.as_str())
            .unwrap_or_else(|| panic!("no shadow line for {}: {all:#?}", result.review_id));
        let live = result.tasks.iter().find(|t| t.task == "abuse").unwrap();
        assert_eq!(line["task"], "abuse");
        assert_eq!(line["model"], "tiny-abuse-v2");
        assert_eq!(line["live_model"], "tiny-abuse");
        assert_eq!(line["live_decision"], decision_lower(live.decision));
        assert_eq!(line["text_sha256"], sha256_hex(text));
        if let Some(expected) = golden.get(text) {
            assert_eq!(line["decision"], expected.as_str(), "{text}");
        }
    }
    server.stop().await;
}

/// A call on a named surface is journaled with the surface and the policy that decided there,
/// and so is a shadow's comparison on it (against live's policy there); the default surface's
/// lines carry no `surface` key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_surface_is_on_its_lines_with_the_policy_that_decided_there() {
    let _shared = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let toml = format!(
        "[shadow]\nlive_pressure_jobs = 1000\n{}\
         [models.tiny-abuse]\npath = \"tests/fixtures/tiny-abuse\"\n\
         [models.tiny-abuse-v2]\npath = \"tests/fixtures/tiny-abuse-v2\"\n\
         [policies.strict-2]\nversion = \"2\"\n\
         [policies.strict-2.thresholds.insult]\nreview = 0.3\nreject = 0.6\n\
         [tasks.abuse]\nlive = \"tiny-abuse\"\nshadows = [{{ model = \"tiny-abuse-v2\", sample_rate = 1.0 }}]\n\
         [tasks.abuse.surfaces]\nkids = \"strict-2\"\n",
        journal_table(&path, "")
    );
    let server = TestServer::start(config(&toml)).await;
    let mut client = server.client().await;
    let mut kids = request(vec![review("k-1", "you are an idiot")]);
    kids.surface = Some("kids".into());
    let answer = client.classify(kids).await.unwrap().into_inner();
    assert_eq!(answer.results[0].tasks[0].model.as_ref().unwrap().policy_name, "strict-2");
    client.classify(request(vec![review("d-1", "you are an idiot")])).await.unwrap();
    wait_lines(&path, "decision", 2).await;
    let all = wait_lines(&path, "shadow", 2).await;
    let line = |kind: &str, id: &str| {
        all.iter()
            .find(|l| l["kind"] == kind && l["review_id"] == id)
            .unwrap_or_else(|| panic!("no {kind} line for {id}: {all:#?}"))
            .clone()
    };
    let kids_decision = line("decision", "k-1");
    assert_eq!((&kids_decision["surface"], &kids_decision["policy"]), (&"kids".into(), &"strict-2".into()));
    assert_eq!(kids_decision["policy_version"], "2");
    let kids_shadow = line("shadow", "k-1");
    assert_eq!(kids_shadow["surface"], "kids");
    assert_eq!(kids_shadow["live_policy"], "strict-2");
    let default_decision = line("decision", "d-1");
    assert!(default_decision.get("surface").is_none(), "{default_decision}");
    assert_eq!(default_decision["policy"], "default");
    let default_shadow = line("shadow", "d-1");
    assert!(default_shadow.get("surface").is_none(), "{default_shadow}");
    assert_eq!(default_shadow["live_policy"], "default");
    server.stop().await;
}

/// `include_text = true` writes the text the model read (title, newline, text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_text_writes_the_text_the_model_read() {
    let _shared = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let server =
        TestServer::start(config(&format!("{}{ONE_MODEL}", journal_table(&path, "include_text = true")))).await;
    let mut r = review("t-1", "great value");
    r.title = Some("Five stars".into());
    server.client().await.classify(request(vec![r])).await.unwrap();
    let all = wait_lines(&path, "decision", 1).await;
    assert_eq!(all[0]["text"], "Five stars\ngreat value");
    assert_eq!(all[0]["text_sha256"], sha256_hex("Five stars\ngreat value"));
    server.stop().await;
}

/// Files rotate at `max_file_bytes` and only `max_files` are kept; every line of each parses,
/// and the records counted as written are the lines on disk plus those rotated away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_rotate_by_size_and_keep_max_files() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let table = journal_table(&path, "max_file_bytes = 4096\nmax_files = 3");
    let server = TestServer::start(config(&format!("{table}{ONE_MODEL}"))).await;
    let base = server.scrape().await;
    let mut client = server.client().await;
    for i in 0..40 {
        let reviews = (0..4).map(|k| review(&format!("{i}-{k}"), "fine product, works well")).collect();
        client.classify(request(reviews)).await.unwrap();
    }
    let written = server.wait_for(&base, RECORDS, &[("outcome", "written")], 160.0).await;
    assert_eq!(written, 160.0);
    server.stop().await;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["decisions.jsonl", "decisions.jsonl.1", "decisions.jsonl.2"]);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.len() <= 4096, "{f:?} is {} bytes", text.len());
        assert!(text.is_empty() || text.ends_with('\n'));
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["kind"], "decision");
        }
    }
}

/// A writer that cannot write (its file is a pipe nobody reads yet) fills its queue: further
/// records are dropped and counted, never blocking a call. Once the pipe is read, every record
/// is either on it or counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_writer_drops_and_counts_records_without_blocking_calls() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("journal.pipe");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success(), "mkfifo");
    // The reader opens at once (so the server's open for writing completes) and reads only
    // when told: until then the pipe's buffer fills and the writer blocks.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let reader_path = fifo.clone();
    let reader = std::thread::spawn(move || {
        let file = std::fs::File::open(&reader_path).unwrap();
        wait.recv().unwrap();
        use std::io::BufRead;
        std::io::BufReader::new(file).lines().map(|l| l.unwrap()).collect::<Vec<String>>()
    });
    let table = journal_table(&fifo, "queue_capacity = 1");
    let server = TestServer::start(config(&format!("{table}{ONE_MODEL}"))).await;
    let base = server.scrape().await;
    let mut client = server.client().await;
    // 64 reviews of ~300-byte lines per call: a few calls fill a 64 KiB pipe.
    let calls = 40;
    let per_call = 64;
    for i in 0..calls {
        let reviews = (0..per_call).map(|k| review(&format!("{i}-{k}"), "fine product, works well")).collect();
        tokio::time::timeout(Duration::from_secs(30), client.classify(request(reviews)))
            .await
            .expect("a stalled journal never holds a call")
            .unwrap();
    }
    let scrape = server.scrape().await;
    let dropped = delta(&base, &scrape, RECORDS, &[("outcome", "dropped_queue_full")]);
    assert!(dropped > 0.0, "the queue of one call filled while the writer was blocked");
    go.send(()).unwrap();
    server.stop().await;
    let read = reader.join().unwrap();
    assert_eq!(read.len() as f64 + dropped, f64::from(calls * per_call), "{dropped} dropped, {} read", read.len());
    for line in &read {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

/// A verdict on a review the journal recorded is counted against the decision served, with no
/// inference: the live model is armed to panic on its next batch, and counting the verdicts
/// does not trip it. A verdict the journal does not know is re-scored (and trips it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_is_counted_against_the_decision_served_without_rescoring() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let (server, faults) = TestServer::start_faulty(config(&format!("{}{ONE_MODEL}", journal_table(&path, "")))).await;
    let base = server.scrape().await;
    let texts: Vec<String> = {
        let mut t: Vec<String> = golden().into_iter().filter(|g| g.model == "tiny-abuse").map(|g| g.text).collect();
        t.sort();
        t.dedup();
        t.truncate(6);
        t
    };
    let reviews = texts.iter().enumerate().map(|(i, t)| review(&format!("v-{i}"), t)).collect();
    let answer = server.client().await.classify(request(reviews)).await.unwrap().into_inner();
    wait_lines(&path, "decision", texts.len()).await;
    // From here on, any live inference panics (and is counted as an error).
    faults.on_batches("tiny-abuse", 1000, Action::Panic);
    let mut expected: HashMap<(String, &str), f64> = HashMap::new();
    // Verdicts on all but the last review: its id is kept for a verdict on another text (a
    // repeat of an id would be dropped as a duplicate).
    let verdicts: Vec<pb::Verdict> = answer
        .results
        .iter()
        .zip(&texts)
        .take(texts.len() - 1)
        .map(|(result, text)| {
            let served = decision_lower(result.tasks[0].decision);
            *expected.entry((served, "review")).or_default() += 1.0;
            pb::Verdict {
                review: Some(review(&result.review_id, text)),
                task: "abuse".into(),
                decision: pb::Decision::Review as i32,
                labels: vec![],
                source: String::new(),
                ..Default::default()
            }
        })
        .collect();
    let n = verdicts.len() as f64;
    let mut feedback = FeedbackClient::new(server.channel().await);
    feedback.submit_verdicts(pb::SubmitVerdictsRequest { verdicts }).await.unwrap();
    let counted = server
        .wait_for(&base, "modserve_verdicts_received_total", &[("task", "abuse"), ("outcome", "counted")], n)
        .await;
    let scrape = server.scrape().await;
    assert_eq!(counted, n, "{scrape}");
    assert_eq!(faults.begun(), 0, "no live inference ran for verdicts the journal knew");
    let lookups = |outcome| delta(&base, &scrape, "modserve_journal_verdict_lookups_total", &[("outcome", outcome)]);
    assert_eq!(lookups("served"), n);
    for decision in ["allow", "review", "reject"] {
        let want = expected.get(&(decision.to_string(), "review")).copied().unwrap_or(0.0);
        let got = delta(
            &base,
            &scrape,
            "modserve_verdicts_total",
            &[("role", "live"), ("model", "tiny-abuse"), ("model_decision", decision), ("human_decision", "review")],
        );
        assert_eq!(got, want, "live {decision} x human review");
    }
    // Another text under a known id, and an id never classified: both re-scored, both fail on
    // the armed live model.
    let unknown = vec![
        pb::Verdict {
            review: Some(review(&answer.results[texts.len() - 1].review_id, "a different text now")),
            task: "abuse".into(),
            decision: pb::Decision::Allow as i32,
            labels: vec![],
            source: String::new(),
            ..Default::default()
        },
        pb::Verdict {
            review: Some(review("never-classified", "you idiot")),
            task: "abuse".into(),
            decision: pb::Decision::Reject as i32,
            labels: vec![],
            source: String::new(),
            ..Default::default()
        },
    ];
    let base = server.scrape().await;
    feedback.submit_verdicts(pb::SubmitVerdictsRequest { verdicts: unknown }).await.unwrap();
    let errors = server
        .wait_for(&base, "modserve_verdicts_received_total", &[("task", "abuse"), ("outcome", "error")], 2.0)
        .await;
    assert_eq!(errors, 2.0);
    let scrape = server.scrape().await;
    assert_eq!(delta(&base, &scrape, "modserve_journal_verdict_lookups_total", &[("outcome", "changed")]), 1.0);
    assert_eq!(delta(&base, &scrape, "modserve_journal_verdict_lookups_total", &[("outcome", "not_found")]), 1.0);
    assert!(faults.begun() > 0, "re-scoring ran the live model");
    server.stop().await;
}

/// Starts the binary on `config`; returns the child, its gRPC channel and its log reader.
async fn spawn(config: &Path) -> (KillOnDrop, tonic::transport::Channel, std::thread::JoinHandle<String>) {
    let mut child = KillOnDrop(
        modserve().arg("--config").arg(config).arg("--log-format").arg("json").stderr(Stdio::piped()).spawn().unwrap(),
    );
    let (Listening { grpc: addr, .. }, logs) = read_logs(&mut child.0);
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    wait_serving(channel.clone()).await;
    (child, channel, logs)
}

/// SIGTERM right after the last answer: the writer drains its queue before the process exits,
/// so the journal holds exactly one line per review answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_loses_no_record() {
    let _shared = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let body = format!("{}{}", journal_table(&path, ""), process_one_model());
    let config = write_config(&dir, &body);
    let (mut child, channel, logs) = spawn(&config).await;
    let (clients, calls, per_call) = (4, 50, 16);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = ModerationClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..calls {
                let reviews = (0..per_call).map(|k| review(&format!("{c}-{i}-{k}"), "works as described")).collect();
                client.classify(request(reviews)).await.expect("answered");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    send_sigterm(child.0.id() as i32);
    let status = tokio::task::spawn_blocking(move || child.0.wait().unwrap()).await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    let logs = logs.join().unwrap();
    assert!(logs.contains("\"stopped\""), "{logs}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    let ids: HashSet<String> =
        lines(&path).iter().map(|l| l["review_id"].as_str().unwrap().to_string()).collect::<HashSet<_>>();
    assert_eq!(text.lines().count(), clients * calls * per_call, "one line per review answered");
    assert_eq!(ids.len(), clients * calls * per_call, "every review answered, once");
}

/// The tiny abuse model with an absolute path, for a config file outside the repository.
fn process_one_model() -> String {
    format!(
        "[models.tiny-abuse]\npath = {:?}\n[tasks.abuse]\nlive = \"tiny-abuse\"\n",
        path_str(&fixture("tiny-abuse"))
    )
}

/// kill -9 under load, then restart: every line of the journal parses and the file ends in a
/// newline. A kill does not always land mid-write, so a torn line is also appended by hand
/// before the restart: the restart must cut it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_write_then_restart_cuts_the_torn_line() {
    let _shared = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let body = format!("{}{}", journal_table(&path, "include_text = true"), process_one_model());
    let config = write_config(&dir, &body);
    // Long texts, so lines are long and writes span pages.
    let text = format!("you are stupid{}", " great product".repeat(60));
    {
        let (child, channel, _logs) = spawn(&config).await;
        let mut callers = Vec::new();
        for c in 0..4 {
            let mut client = ModerationClient::new(channel.clone());
            let text = text.clone();
            callers.push(tokio::spawn(async move {
                for i in 0..100_000 {
                    let reviews = (0..16).map(|k| review(&format!("{c}-{i}-{k}"), &text)).collect();
                    if client.classify(request(reviews)).await.is_err() {
                        break;
                    }
                }
            }));
        }
        // Until the journal has grown past a few writes.
        for _ in 0..400 {
            if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) > 512 * 1024 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        drop(child); // SIGKILL
        for c in callers {
            c.await.unwrap();
        }
    }
    let killed = std::fs::read_to_string(&path).unwrap();
    assert!(killed.len() > 512 * 1024, "the load wrote records before the kill");
    if killed.ends_with('\n') {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"kind\":\"decision\",\"time\":\"2026-").unwrap();
    }
    let (child, channel, _logs) = spawn(&config).await;
    let answer = ModerationClient::new(channel)
        .classify(request(vec![review("after-restart", "fine")]))
        .await
        .expect("serves after restart");
    assert_eq!(answer.into_inner().results.len(), 1);
    // The file already holds the records from before the kill: wait for this one (30 s at most).
    let mut found = false;
    for _ in 0..600 {
        found = lines(&path).iter().any(|l| l["review_id"] == "after-restart");
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "the first record after the restart is journaled");
    drop(child);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    for (i, line) in text.lines().enumerate() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("line {i} does not parse ({e}): {line}"));
    }
}

/// A journal that cannot be opened stops start-up, naming the key and the path: a server that
/// was asked to journal never serves without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_cannot_be_opened_stops_start_up() {
    let _shared = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let path = not_a_dir.join("decisions.jsonl");
    let server = modserve::app::Server::start(config(&format!("{}{ONE_MODEL}", journal_table(&path, ""))))
        .await
        .expect("listeners bind");
    let error = server.wait().await.expect_err("start-up fails").to_string();
    assert!(error.contains("journal.path: cannot open") && error.contains(&path_str(&path)), "{error}");
}
