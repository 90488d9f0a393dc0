//! The labelling loop end to end: shadow, sample, label, estimate. A known synthetic mix of
//! reviews goes through the real server with a model shadow; the labelling queue must hold
//! exactly the reviews its documented hash picks (every disagreement, a tenth of agreements),
//! each with its inclusion probability; moderators' verdicts come back for those (and for a few
//! reviews picked by no one, which must not count); a real Prometheus scrapes the counts and
//! `modserve report` gives weighted precision and recall. The weighted figure equals the
//! Horvitz-Thompson estimate computed here from the queue file, and its interval holds the true
//! precision of the whole mix, counted here; the unweighted one misses it. Also: a labelling
//! path that cannot be opened stops start-up, and a reload cannot change `[labelling]`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

use crate::common::prometheus::Prometheus;
use crate::common::*;
use modserve::serving::grpc::pb;
use modserve::serving::grpc::pb::feedback_client::FeedbackClient;

const CONFIG: &str = r#"
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[labelling]
path = "{queue}"
disagreement_rate = 1.0
agreement_rate = 0.1
[tasks.abuse]
live = "tiny-abuse"
shadows = [{ model = "tiny-abuse-v2", sample_rate = 1.0 }]
"#;

const AGREEMENT_RATE: f64 = 0.1;

/// The labelling sample as docs/shadow.md states it, written out here so the test does not
/// borrow the server's code: FNV-1a 64 over the salt, a 0xff byte and the review id, the
/// splitmix64 finaliser, and the review is in when the hash is below rate x 2^64.
fn in_sample(id: &str, salt: &str, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.bytes().chain([0xff]).chain(id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h as f64) < rate * (u64::MAX as f64)
}

/// One review of the mix: its text, both models' decisions (from the golden scores), and the
/// moderator's decision, set by construction.
struct Case {
    id: String,
    text: &'static str,
    live: usize,
    candidate: usize,
    human: usize,
}

/// 1,200 reviews: 20% where the models disagree ("this is dumb", "you are stupid"), on which
/// the moderator flags only 1 in 5; 50% both flag ("you idiot", "what a moron"), moderator
/// agrees 9 in 10; 30% both allow ("great product", "zorblax ..."), moderator flags 1 in 10.
fn mix() -> Vec<Case> {
    let mut golden_by: HashMap<(String, String), String> = HashMap::new();
    for g in golden() {
        golden_by.insert((g.model, g.text), g.decision);
    }
    let decided = |model: &str, text: &str| decision_index(&golden_by[&(model.to_string(), text.to_string())]);
    (0..1200)
        .map(|i| {
            let (text, human) = match i % 10 {
                0 | 1 => {
                    let text = if i % 2 == 0 { "this is dumb" } else { "you are stupid" };
                    (text, if (i / 10) % 5 == 0 { 2 } else { 0 })
                }
                2..=6 => {
                    (if i % 2 == 0 { "you idiot" } else { "what a moron" }, if (i / 10) % 10 == 3 { 0 } else { 2 })
                }
                _ => (
                    if i % 2 == 0 { "great product" } else { "zorblax quixotic flummery" },
                    if (i / 10) % 10 == 7 { 2 } else { 0 },
                ),
            };
            Case {
                id: format!("lab-{i}"),
                text,
                live: decided("tiny-abuse", text),
                candidate: decided("tiny-abuse-v2", text),
                human,
            }
        })
        .collect()
}

/// Precision when flagging at `level`: hits / flagged, each case weighted.
fn weighted_precision<'a>(
    cases: impl Iterator<Item = (&'a Case, f64)>,
    decision: fn(&Case) -> usize,
    level: usize,
) -> f64 {
    let (mut hits, mut flagged) = (0.0, 0.0);
    for (c, w) in cases {
        if decision(c) >= level {
            flagged += w;
            if c.human >= level {
                hits += w;
            }
        }
    }
    hits / flagged
}

fn pair(v: &serde_json::Value) -> (f64, f64) {
    (v[0].as_f64().unwrap(), v[1].as_f64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_verdicts_from_the_labelling_queue_recover_the_true_precision() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("labelling.jsonl");
    let body = CONFIG.replace("{queue}", &path_str(&queue));
    let server = TestServer::start(config(&body)).await;
    let prometheus = Prometheus::start(&[server.metrics_addr]).await;
    let labelled = r#"sum(modserve_labelled_verdicts_total{task="abuse", shadow_model="tiny-abuse-v2"})"#;
    // Every series exists at 0 before the first verdict, so the window counts start from a sample.
    assert_eq!(prometheus.wait_for(labelled, 0.0).await.map(|(_, v)| v), Some(0.0));

    let cases = mix();
    let base = server.scrape().await;
    let mut client = server.client().await;
    for chunk in cases.chunks(50) {
        let reviews = chunk.iter().map(|c| review(&c.id, c.text)).collect();
        let reply = client.classify(request(reviews)).await.unwrap().into_inner();
        for (c, r) in chunk.iter().zip(&reply.results) {
            assert_eq!(decision_index(decision_name(r.tasks[0].decision)), c.live, "{}: the golden decision", c.text);
        }
    }
    let compared = [("shadow_model", "tiny-abuse-v2"), ("outcome", "compared")];
    let n = cases.len() as f64;
    assert_eq!(server.wait_for(&base, "modserve_shadow_reviews_total", &compared, n).await, n);

    // The queue holds exactly the picked reviews: every disagreement, and the agreements the
    // labelling hash takes at 0.1, each with its stratum and inclusion probability.
    let picked: Vec<&Case> = cases
        .iter()
        .filter(|c| c.live != c.candidate || in_sample(&c.id, "modserve-labelling", AGREEMENT_RATE))
        .collect();
    let disagreements = cases.iter().filter(|c| c.live != c.candidate).count();
    assert_eq!(disagreements, 240);
    let written = [("outcome", "written")];
    let lines = picked.len() as f64;
    assert_eq!(server.wait_for(&base, "modserve_labelling_queue_entries_total", &written, lines).await, lines);
    let mut entries: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for line in std::fs::read_to_string(&queue).unwrap().lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(entries.insert(e["review_id"].as_str().unwrap().to_string(), e).is_none(), "one entry per review");
    }
    assert_eq!(entries.len(), picked.len());
    for c in &picked {
        let e = entries.get(&c.id).unwrap_or_else(|| panic!("{} is not in the queue", c.id));
        let (stratum, p) = if c.live != c.candidate { ("disagreement", 1.0) } else { ("agreement", AGREEMENT_RATE) };
        assert_eq!((e["stratum"].as_str(), e["inclusion_probability"].as_f64()), (Some(stratum), Some(p)), "{e}");
        assert_eq!(e["live"]["decision"], DECISIONS[c.live]);
        assert_eq!(e["shadow"]["decision"], DECISIONS[c.candidate]);
        assert_eq!(e["shadow"]["model"], "tiny-abuse-v2");
        assert!(e.get("text").is_none(), "no text unless include_text");
    }

    // Moderators label the queue; a few other reviews get verdicts as they always did, and
    // those must not count in the weighted figures.
    let organic: Vec<&Case> = cases.iter().filter(|c| !entries.contains_key(&c.id)).take(60).collect();
    let verdict = |c: &Case| pb::Verdict {
        review: Some(review(&c.id, c.text)),
        task: "abuse".into(),
        decision: [pb::Decision::Allow, pb::Decision::Review, pb::Decision::Reject][c.human] as i32,
        labels: vec![],
        source: "labelling".into(),
        surface: None,
    };
    let mut feedback = FeedbackClient::new(server.channel().await);
    let all: Vec<&Case> = picked.iter().chain(&organic).copied().collect();
    for chunk in all.chunks(200) {
        let verdicts = chunk.iter().map(|c| verdict(c)).collect();
        let answer = feedback.submit_verdicts(pb::SubmitVerdictsRequest { verdicts }).await.unwrap().into_inner();
        assert_eq!(answer.accepted as usize, chunk.len());
    }
    let want = picked.len() as f64;
    assert_eq!(prometheus.wait_for(labelled, want).await.map(|(_, v)| v), Some(want), "only picked reviews count");
    let all_verdicts = r#"sum(modserve_verdicts_total{task="abuse", role="live"})"#;
    let total = (picked.len() + organic.len()) as f64;
    // At least: earlier tests in this process count verdicts on the same series.
    assert!(prometheus.wait_at_least(all_verdicts, total).await.is_some_and(|(_, v)| v >= total));

    // The truth over the whole mix, and the estimate the queue allows, both counted here.
    let truth = weighted_precision(cases.iter().map(|c| (c, 1.0)), |c| c.live, 1);
    let weight = |c: &Case| 1.0 / entries[&c.id]["inclusion_probability"].as_f64().unwrap();
    let horvitz_thompson = weighted_precision(picked.iter().map(|&c| (c, weight(c))), |c| c.live, 1);
    let candidate_ht = weighted_precision(picked.iter().map(|&c| (c, weight(c))), |c| c.candidate, 1);
    let unweighted = weighted_precision(picked.iter().map(|&c| (c, 1.0)), |c| c.live, 1);

    let config_file = dir.path().join("modserve.toml");
    std::fs::write(&config_file, &body).unwrap();
    let out = dir.path().join("report");
    let url = prometheus.url();
    let run = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_modserve"))
            .env_remove("RUST_LOG")
            .args(["report", "--config"])
            .arg(&config_file)
            .args(["--prometheus", &url, "--task", "abuse", "--window", "15m"])
            .args(["--candidate", "tiny-abuse-v2", "--policy", "default", "--out"])
            .arg(&out)
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&run.stdout);
    let json = std::fs::read_to_string(out.join("launch-report.json"))
        .unwrap_or_else(|e| panic!("no report ({e}): {stdout}\n{}", String::from_utf8_lossy(&run.stderr)));
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let w = &report["derived"]["weighted"];
    assert_eq!(w["verdicts"], picked.len());
    assert_eq!(w["disagreements"], disagreements);
    let live = &w["live"]["at_review"]["precision"];
    let value = live["value"].as_f64().unwrap();
    assert!((value - horvitz_thompson).abs() < 1e-9, "report {value}, computed here {horvitz_thompson}");
    let candidate = w["candidate"]["at_review"]["precision"]["value"].as_f64().unwrap();
    assert!((candidate - candidate_ht).abs() < 1e-9, "report {candidate}, computed here {candidate_ht}");
    let (lo, hi) = pair(&live["ci95"]);
    assert!(lo <= truth && truth <= hi, "weighted {value} [{lo}, {hi}] misses the true precision {truth}");
    let u = &live["unweighted"];
    assert!((u["value"].as_f64().unwrap() - unweighted).abs() < 1e-9, "{u}");
    let (ulo, uhi) = pair(&u["ci95"]);
    assert!(truth > uhi || truth < ulo, "unweighted {unweighted} [{ulo}, {uhi}] should miss {truth}");
    assert!(
        stdout.contains("Precision and recall from the labelling queue (weighted)"),
        "the Markdown has the section: {stdout}"
    );
    drop(prometheus);
    server.stop().await;
}

#[test]
fn a_labelling_path_that_cannot_be_opened_stops_start_up() {
    let _shared = shared_blocking();
    let dir = tempfile::tempdir().unwrap();
    // A folder cannot be made inside a regular file.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let queue = blocker.join("labelling.jsonl");
    let body = format!(
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [models.tiny-abuse]\npath = {:?}\n[tasks.abuse]\nlive = \"tiny-abuse\"\n[labelling]\npath = {:?}\n",
        path_str(&fixture("tiny-abuse")),
        path_str(&queue)
    );
    let config = dir.path().join("modserve.toml");
    std::fs::write(&config, body).unwrap();
    let out = modserve().arg("--config").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("labelling.path: cannot open {}", queue.display())), "{stderr}");
}

#[test]
fn a_reload_cannot_change_the_labelling_queue() {
    let parse = |labelling: &str| {
        let text = format!("[models.m]\npath = \"m\"\n[tasks.abuse]\nlive = \"m\"\n{labelling}");
        modserve::config::Config::parse(&text, Path::new("/srv/modserve.toml"), &Default::default()).unwrap()
    };
    let running = parse("[labelling]\npath = \"q.jsonl\"\n");
    for other in ["", "[labelling]\npath = \"q.jsonl\"\nagreement_rate = 0.5\n"] {
        let errors = modserve::control::reload::fixed_settings_changed(&running, &parse(other));
        assert_eq!(errors.len(), 1, "{other:?}: {errors:?}");
        assert!(errors[0].starts_with("labelling cannot change at run time"), "{errors:?}");
    }
    assert!(modserve::control::reload::fixed_settings_changed(&running, &running).is_empty());
}
