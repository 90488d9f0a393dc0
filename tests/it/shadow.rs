//! Shadow mode end to end: live answers untouched, comparisons counted exactly, sampling
//! deterministic, failing / panicking / slow shadows isolated and counted.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use modserve::serving::grpc::pb;
use prost::Message;

const SHADOWED: &str = r#"
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[models.tiny-fraud]
path = "tests/fixtures/tiny-fraud"
[models.tiny-fraud-v2]
path = "tests/fixtures/tiny-fraud-v2"
[tasks.abuse]
live = "tiny-abuse"
shadows = [{ model = "tiny-abuse-v2", sample_rate = 1.0 }]
[tasks.fraud]
live = "tiny-fraud"
shadows = [{ model = "tiny-fraud-v2", sample_rate = 1.0 }]
"#;

/// Texts both tiny-abuse and tiny-abuse-v2 have golden decisions for: (text, live, shadow).
fn paired_golden() -> Vec<(String, String, String)> {
    let mut by_text: HashMap<String, HashMap<String, String>> = HashMap::new();
    for g in golden() {
        by_text.entry(g.text.clone()).or_default().insert(g.model.clone(), g.decision.clone());
    }
    let mut pairs: Vec<(String, String, String)> = by_text
        .into_iter()
        .filter_map(|(text, m)| Some((text, m.get("tiny-abuse")?.clone(), m.get("tiny-abuse-v2")?.clone())))
        .collect();
    pairs.sort();
    pairs
}

fn requests() -> Vec<pb::ClassifyRequest> {
    let texts =
        ["you idiot", "this is dumb", "you are stupid", "great product", "call me", "win a free prize", "discount"];
    (0..30)
        .map(|i| {
            let reviews = (0..1 + i % 4).map(|k| review(&format!("r{i}-{k}"), texts[(i + k) % texts.len()])).collect();
            pb::ClassifyRequest { request_id: format!("q{i}"), ..request(reviews) }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_responses_are_byte_identical_with_and_without_shadows() {
    let _guard = exclusive().await;
    let plain = TestServer::start(config(BASIC)).await;
    let shadowed = TestServer::start(config(SHADOWED)).await;
    let base = shadowed.scrape().await;
    let (mut a, mut b) = (plain.client().await, shadowed.client().await);
    for req in requests() {
        let without = a.classify(req.clone()).await.unwrap().into_inner().encode_to_vec();
        let with = b.classify(req).await.unwrap().into_inner().encode_to_vec();
        assert_eq!(without, with);
    }
    // And the shadows really ran.
    let reviews: usize = requests().iter().map(|r| r.reviews.len()).sum();
    let labels = [("shadow_model", "tiny-abuse-v2"), ("outcome", "compared")];
    let compared = shadowed.wait_for(&base, "modserve_shadow_reviews_total", &labels, reviews as f64).await;
    assert_eq!(compared, reviews as f64);
    plain.stop().await;
    shadowed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confusion_counts_equal_the_expected_ones() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("disagreements.jsonl");
    let log = format!("[shadow.disagreement_log]\npath = {:?}\n", log_path.display().to_string());
    let server = TestServer::start(config(&format!("{log}{SHADOWED}"))).await;
    let base = server.scrape().await;
    let mut client = server.client().await;
    let pairs = paired_golden();
    assert!(pairs.len() >= 8);
    let mut expected: HashMap<(String, String), f64> = HashMap::new();
    for (i, (text, live, shadow)) in pairs.iter().enumerate() {
        let mut req = request(vec![review(&format!("g{i}"), text)]);
        req.tasks = vec!["abuse".into()];
        client.classify(req).await.unwrap();
        *expected.entry((live.to_lowercase(), shadow.to_lowercase())).or_default() += 1.0;
    }
    let n = pairs.len() as f64;
    let labels = [("shadow_model", "tiny-abuse-v2"), ("outcome", "compared")];
    assert_eq!(server.wait_for(&base, "modserve_shadow_reviews_total", &labels, n).await, n);
    let scrape = server.scrape().await;
    for live in ["allow", "review", "reject"] {
        for shadow in ["allow", "review", "reject"] {
            let got = delta(
                &base,
                &scrape,
                "modserve_shadow_comparisons_total",
                &[("shadow_model", "tiny-abuse-v2"), ("live_decision", live), ("shadow_decision", shadow)],
            );
            let want = expected.get(&(live.to_string(), shadow.to_string())).copied().unwrap_or(0.0);
            assert_eq!(got, want, "live {live} x shadow {shadow}");
        }
    }
    // The v1/v2 fixtures disagree in both directions on these texts.
    assert!(expected.contains_key(&("review".into(), "reject".into())));
    assert!(expected.contains_key(&("reject".into(), "review".into())));
    let deltas = delta(
        &base,
        &scrape,
        "modserve_shadow_score_delta_count",
        &[("shadow_model", "tiny-abuse-v2"), ("label", "insult")],
    );
    assert_eq!(deltas, n);
    // Shadow latency lands in the same family as live, told apart by role.
    assert!(
        metric(
            &scrape,
            "modserve_stage_duration_seconds_count",
            &[("model", "tiny-abuse-v2"), ("role", "shadow"), ("stage", "inference")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(metric(&scrape, "modserve_model_info", &[("model", "tiny-abuse-v2"), ("role", "shadow")]), Some(1.0));
    server.stop().await;

    // Every disagreement, and nothing else, is in the log (flushed at shutdown), without text.
    let disagreements: f64 = expected.iter().filter(|((l, s), _)| l != s).map(|(_, n)| n).sum();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len() as f64, disagreements);
    let by_id: HashMap<String, &(String, String, String)> =
        pairs.iter().enumerate().map(|(i, p)| (format!("g{i}"), p)).collect();
    for line in &lines {
        let (text, live, shadow) = by_id[line["review_id"].as_str().unwrap()];
        assert_eq!(line["task"], "abuse");
        assert_eq!(line["live"]["model"], "tiny-abuse");
        assert_eq!(line["shadow"]["model"], "tiny-abuse-v2");
        assert_eq!(line["live"]["decision"], live.to_lowercase());
        assert_eq!(line["shadow"]["decision"], shadow.to_lowercase());
        let rank = |d: &str| ["allow", "review", "reject"].iter().position(|x| *x == d).unwrap();
        let want = if rank(&shadow.to_lowercase()) > rank(&live.to_lowercase()) { "stricter" } else { "more_lenient" };
        assert_eq!(line["direction"], want);
        assert!(line.get("text").is_none(), "text is left out by default");
        assert_eq!(line["text_sha256"], modserve::inference::model::package::sha256_hex(text.as_bytes()));
        assert!(line["live"]["scores"]["insult"].is_number());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_is_deterministic_by_review_id() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(
        r#"
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[tasks.abuse]
live = "tiny-abuse"
shadows = [{ model = "tiny-abuse-v2", sample_rate = 0.3, salt = "experiment-7" }]
"#,
    ))
    .await;
    let base = server.scrape().await;
    let mut client = server.client().await;
    let ids: Vec<String> = (0..200).map(|i| format!("review-{i}")).collect();
    let in_sample = ids.iter().filter(|id| modserve::shadow::sampled(id, "experiment-7", 0.3)).count() as f64;
    assert!(in_sample > 30.0 && in_sample < 90.0, "{in_sample}");
    // Send every id twice (as a retry would): the sample is the same both times.
    for _round in 0..2 {
        for chunk in ids.chunks(20) {
            client.classify(request(chunk.iter().map(|id| review(id, "this is dumb")).collect())).await.unwrap();
        }
    }
    let compared = [("shadow_model", "tiny-abuse-v2"), ("outcome", "compared")];
    assert_eq!(
        server.wait_for(&base, "modserve_shadow_reviews_total", &compared, 2.0 * in_sample).await,
        2.0 * in_sample
    );
    let scrape = server.scrape().await;
    let sampled_out = [("shadow_model", "tiny-abuse-v2"), ("outcome", "sampled_out")];
    assert_eq!(delta(&base, &scrape, "modserve_shadow_reviews_total", &sampled_out), 2.0 * (200.0 - in_sample));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_panicking_shadow_never_touches_live_answers() {
    let _guard = exclusive().await;
    let (server, faults) = TestServer::start_faulty(config(
        r#"
[shadow]
breaker_window = 4
breaker_min_batches = 4
breaker_cooldown = "1h"
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[models.tiny-faulty]
path = "tests/fixtures/tiny-faulty"
[tasks.abuse]
live = "tiny-abuse"
shadows = [{ model = "tiny-faulty", sample_rate = 1.0 }]
"#,
    ))
    .await;
    let base = server.scrape().await;
    let mut client = server.client().await;
    // "explode" fails the shadow in ONNX Runtime, "nan" makes it emit NaN, "huge" panics it (a
    // fault injected through its backend). The live model scores all of them normally.
    faults.on_word("tiny-faulty", "huge", Action::Panic);
    let texts = ["you idiot explode", "nan great product", "huge you idiot", "great product explode"];
    let expected = ["REJECT", "ALLOW", "REJECT", "ALLOW"];
    let error = [("shadow_model", "tiny-faulty"), ("outcome", "error")];
    for round in 0..3 {
        for (i, (text, want)) in texts.iter().zip(expected).enumerate() {
            let resp =
                client.classify(request(vec![review(&format!("{round}-{i}"), text)])).await.expect("live unaffected");
            assert_eq!(decision_name(resp.into_inner().results[0].tasks[0].decision), want, "{text}");
        }
        if round == 0 {
            // The shadow fails all four (asynchronously); the fourth failure opens its breaker.
            assert_eq!(server.wait_for(&base, "modserve_shadow_reviews_total", &error, 4.0).await, 4.0);
        }
    }
    let scrape = server.scrape().await;
    assert_eq!(delta(&base, &scrape, "modserve_requests_total", &[("method", "Classify"), ("code", "OK")]), 12.0);
    // After the breaker opened, the other eight reviews were shed without reaching the shadow.
    assert_eq!(delta(&base, &scrape, "modserve_shadow_reviews_total", &error), 4.0);
    assert_eq!(delta(&base, &scrape, "modserve_shadow_breaker_trips_total", &[("shadow_model", "tiny-faulty")]), 1.0);
    let shed = delta(
        &base,
        &scrape,
        "modserve_shadow_reviews_total",
        &[("shadow_model", "tiny-faulty"), ("outcome", "breaker_open")],
    );
    assert_eq!(shed, 8.0);
    assert_eq!(metric(&scrape, "modserve_shadow_breaker_open", &[("shadow_model", "tiny-faulty")]), Some(1.0));
    // Counted per failed batch: the four jobs may have shared batches.
    let failed_batches =
        delta(&base, &scrape, "modserve_inference_errors_total", &[("model", "tiny-faulty"), ("role", "shadow")]);
    assert!((1.0..=4.0).contains(&failed_batches), "{failed_batches}");
    assert_eq!(
        delta(&base, &scrape, "modserve_inference_errors_total", &[("model", "tiny-abuse"), ("role", "live")]),
        0.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_shadow_is_shed_and_counted_while_live_keeps_answering() {
    let _guard = exclusive().await;
    let (server, faults) = TestServer::start_faulty(config(
        r#"
[shadow]
max_delay = "50ms"
live_pressure_jobs = 1000
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[models.tiny-abuse-v2.batching]
queue_capacity = 2
max_batch_size = 1
[tasks.abuse]
live = "tiny-abuse"
shadows = [{ model = "tiny-abuse-v2", sample_rate = 1.0 }]
"#,
    ))
    .await;
    let base = server.scrape().await;
    let mut client = server.client().await;
    // Every review stalls the shadow 100 ms (a fault injected through its backend); live
    // answers at full speed.
    faults.on_word("tiny-abuse-v2", "idiot", Action::Sleep(Duration::from_millis(100)));
    let n = 40;
    for i in 0..n {
        let resp =
            client.classify(request(vec![review(&format!("s{i}"), "you idiot")])).await.expect("live unaffected");
        assert_eq!(decision_name(resp.into_inner().results[0].tasks[0].decision), "REJECT");
    }
    let scrape = server.scrape().await;
    let count = |outcome: &str| {
        delta(
            &base,
            &scrape,
            "modserve_shadow_reviews_total",
            &[("shadow_model", "tiny-abuse-v2"), ("outcome", outcome)],
        )
    };
    assert!(count("queue_full") >= 1.0, "a queue of 2 behind a 100 ms shadow overflows: {scrape}");
    // Every review is accounted for once the shadow has drained: compared, shed or late.
    let accounted = |s: &str| {
        // `throttled`: after a tick with sheds the effective rate may drop below 1.
        ["compared", "queue_full", "deadline", "error", "throttled"]
            .iter()
            .map(|o| {
                delta(&base, s, "modserve_shadow_reviews_total", &[("shadow_model", "tiny-abuse-v2"), ("outcome", o)])
            })
            .sum::<f64>()
    };
    let mut total = 0.0;
    for _ in 0..200 {
        total = accounted(&server.scrape().await);
        if total >= n as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(total, n as f64);
    let scrape = server.scrape().await;
    assert_eq!(delta(&base, &scrape, "modserve_requests_total", &[("method", "Classify"), ("code", "OK")]), n as f64);
    server.stop().await;
}

/// While live work is queueing, shadow work is shed as `live_pressure`: the live model stalls on
/// its first request (a fault injected through its backend) while two more queue behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_work_is_shed_while_live_work_is_queueing() {
    let _guard = exclusive().await;
    let (server, faults) = TestServer::start_faulty(config(
        r#"
[shadow]
live_pressure_jobs = 1
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[models.tiny-abuse.batching]
max_batch_size = 1
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[tasks.abuse]
live = "tiny-abuse"
shadows = [{ model = "tiny-abuse-v2", sample_rate = 1.0 }]
"#,
    ))
    .await;
    let base = server.scrape().await;
    let mut first = server.client().await;
    // Stalls of the live worker, injected through its backend: the first until both are queued.
    faults.on_word("tiny-abuse", "huge", Action::Hold);
    faults.on_word("tiny-abuse", "thanks", Action::Sleep(Duration::from_millis(300)));
    let stall =
        tokio::spawn(async move { first.classify(request(vec![review("stall", "you idiot huge")])).await.unwrap() });
    // Once the stalled job is running (its queue wait recorded), queue two more behind it, in
    // order. The first of them stalls the worker again, so the other is still queued when the
    // first request's shadow work is offered.
    let started = [("model", "tiny-abuse"), ("role", "live"), ("stage", "queue_wait")];
    assert_eq!(server.wait_for(&base, "modserve_stage_duration_seconds_count", &started, 1.0).await, 1.0);
    let depth = [("model", "tiny-abuse"), ("role", "live")];
    let mut queued = Vec::new();
    for (i, text) in ["you idiot thanks", "you idiot"].into_iter().enumerate() {
        let mut c = server.client().await;
        queued.push(tokio::spawn(
            async move { c.classify(request(vec![review(&format!("q{i}"), text)])).await.unwrap() },
        ));
        let want = (i + 1) as f64;
        assert_eq!(server.wait_for(&base, "modserve_queue_depth", &depth, want).await, want, "q{i} queued");
    }
    faults.release();
    stall.await.unwrap();
    for q in queued {
        q.await.unwrap();
    }
    let shed = [("shadow_model", "tiny-abuse-v2"), ("outcome", "live_pressure")];
    let got = delta(&base, &server.scrape().await, "modserve_shadow_reviews_total", &shed);
    assert!(got >= 1.0, "the stalled request's shadow work was offered while live jobs were queued: {got}");
    server.stop().await;
}
