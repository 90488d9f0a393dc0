//! Moderator verdicts and policy-only shadows end to end: verdicts are counted per model exactly
//! (live, a model shadow and a policy-only shadow, each against decisions computed here from the
//! golden scores), repeats are not counted twice, bad input is refused naming the field, a full
//! queue refuses the call, verdicts that cannot be scored in time are shed and counted, and a
//! policy-only shadow runs no inference.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use modserve::serving::grpc::pb;
use modserve::serving::grpc::pb::feedback_client::FeedbackClient;

/// The live model, a model shadow, and the live model under a stricter policy.
const WITH_POLICIES: &str = r#"
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[policies.strict-2]
version = "2"
[policies.strict-2.thresholds.insult]
review = 0.3
reject = 0.6
[feedback]
sources = ["trust-safety"]
[tasks.abuse]
live = "tiny-abuse"
shadows = [
  { model = "tiny-abuse-v2", sample_rate = 1.0 },
  { model = "tiny-abuse", policy = "strict-2", sample_rate = 1.0 },
]
"#;

/// A golden text with what each configured decider says about it (lowercase decisions).
struct Case {
    text: String,
    live: String,
    v2: String,
    strict: &'static str,
}

fn cases() -> Vec<Case> {
    let mut by_text: HashMap<String, HashMap<String, (String, Vec<f32>)>> = HashMap::new();
    for g in golden() {
        by_text.entry(g.text.clone()).or_default().insert(g.model.clone(), (g.decision.clone(), g.probabilities));
    }
    let mut cases: Vec<Case> = by_text
        .into_iter()
        .filter_map(|(text, m)| {
            let (live, scores) = m.get("tiny-abuse")?.clone();
            let (v2, _) = m.get("tiny-abuse-v2")?.clone();
            Some(Case { text, live: live.to_lowercase(), v2: v2.to_lowercase(), strict: DECISIONS[strict_2(&scores)] })
        })
        .collect();
    cases.sort_by(|a, b| a.text.cmp(&b.text));
    assert!(cases.len() >= 4, "golden.json has too few texts scored by both abuse fixtures");
    cases
}

const HUMAN: [pb::Decision; 3] = [pb::Decision::Reject, pb::Decision::Allow, pb::Decision::Review];
/// (source sent, source counted).
const SOURCES: [(&str, &str); 3] = [("trust-safety", "trust-safety"), ("", "none"), ("vendor-x", "other")];

fn human_name(d: pb::Decision) -> &'static str {
    match d {
        pb::Decision::Allow => "allow",
        pb::Decision::Review => "review",
        pb::Decision::Reject => "reject",
        pb::Decision::Unspecified => "unspecified",
    }
}

fn verdict(id: &str, text: &str, human: pb::Decision, source: &str) -> pb::Verdict {
    pb::Verdict {
        review: Some(review(id, text)),
        task: "abuse".into(),
        decision: human as i32,
        labels: vec![],
        source: source.into(),
        surface: None,
    }
}

/// Polls until the sum of `name{labels}` has grown by `want` since `base` (verdicts are scored
/// after the call returns); 30 s at most. Returns the last growth.
async fn wait_sum(server: &TestServer, base: &str, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let mut last = 0.0;
    for _ in 0..600 {
        last = sum_where(&server.scrape().await, name, labels) - sum_where(base, name, labels);
        if last >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

async fn feedback(server: &TestServer) -> FeedbackClient<tonic::transport::Channel> {
    FeedbackClient::new(server.channel().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_are_counted_per_model_and_policy_exactly_once() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(WITH_POLICIES)).await;
    let base = server.scrape().await;
    let cases = cases();
    // Every case under every human decision and source: 9 verdicts per golden text.
    let mut verdicts = Vec::new();
    // (model, role, policy, model decision, human decision, source) -> verdicts.
    type Cell = (&'static str, &'static str, &'static str, String, &'static str, &'static str);
    let mut expected: HashMap<Cell, f64> = HashMap::new();
    for (c, case) in cases.iter().enumerate() {
        for (h, human) in HUMAN.iter().enumerate() {
            for (s, (source, label)) in SOURCES.iter().enumerate() {
                verdicts.push(verdict(&format!("c{c}-h{h}-s{s}"), &case.text, *human, source));
                for (model, role, policy, decision) in [
                    ("tiny-abuse", "live", "default", case.live.clone()),
                    ("tiny-abuse-v2", "shadow", "default", case.v2.clone()),
                    ("tiny-abuse", "shadow", "strict-2", case.strict.to_string()),
                ] {
                    *expected.entry((model, role, policy, decision, human_name(*human), label)).or_default() += 1.0;
                }
            }
        }
    }
    let n = verdicts.len();
    let mut client = feedback(&server).await;
    let answer = client.submit_verdicts(pb::SubmitVerdictsRequest { verdicts: verdicts.clone() }).await.unwrap();
    assert_eq!(answer.get_ref().accepted as usize, n);
    assert_eq!(answer.get_ref().duplicates, 0);
    let counted = wait_sum(
        &server,
        &base,
        "modserve_verdicts_received_total",
        &[("task", "abuse"), ("outcome", "counted")],
        n as f64,
    )
    .await;
    assert_eq!(counted, n as f64);

    // Every cell of every model's matrix, including the zeros.
    let now = server.scrape().await;
    for (model, role, policy) in [
        ("tiny-abuse", "live", "default"),
        ("tiny-abuse-v2", "shadow", "default"),
        ("tiny-abuse", "shadow", "strict-2"),
    ] {
        for model_decision in ["allow", "review", "reject"] {
            for human in ["allow", "review", "reject"] {
                for (_, source) in SOURCES {
                    let labels = [
                        ("task", "abuse"),
                        ("model", model),
                        ("role", role),
                        ("policy", policy),
                        ("source", source),
                        ("model_decision", model_decision),
                        ("human_decision", human),
                    ];
                    let got = sum_where(&now, "modserve_verdicts_total", &labels)
                        - sum_where(&base, "modserve_verdicts_total", &labels);
                    let cell = (model, role, policy, model_decision.to_string(), human, source);
                    let want = expected.get(&cell).copied().unwrap_or(0.0);
                    assert_eq!(got, want, "{labels:?}");
                }
            }
        }
    }
    // The policy-only shadow's series carry its policy version; the live one its manifest's.
    assert_eq!(
        sum_where(
            &now,
            "modserve_verdicts_total",
            &[("model", "tiny-abuse"), ("role", "shadow"), ("policy_version", "2")]
        ) - sum_where(
            &base,
            "modserve_verdicts_total",
            &[("model", "tiny-abuse"), ("role", "shadow"), ("policy_version", "2")]
        ),
        n as f64
    );

    // The same verdicts again: nothing new is counted.
    let again = client.submit_verdicts(pb::SubmitVerdictsRequest { verdicts }).await.unwrap();
    assert_eq!((again.get_ref().accepted, again.get_ref().duplicates as usize), (0, n));
    let after = server.scrape().await;
    assert_eq!(
        sum_where(&after, "modserve_verdicts_received_total", &[("outcome", "duplicate")])
            - sum_where(&now, "modserve_verdicts_received_total", &[("outcome", "duplicate")]),
        n as f64,
        "repeats are counted as duplicates"
    );
    assert_eq!(
        sum_where(&after, "modserve_verdicts_total", &[("task", "abuse")]),
        sum_where(&now, "modserve_verdicts_total", &[("task", "abuse")]),
        "repeats change no confusion count"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_only_shadow_runs_no_inference_and_decides_from_the_live_scores() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(WITH_POLICIES)).await;
    let base = server.scrape().await;
    let mut client = server.client().await;
    let texts = ["you idiot", "this is dumb", "you are stupid", "great product", "i will hurt you", "nice"];
    let mut expected: HashMap<(String, &str), f64> = HashMap::new();
    let calls = 12;
    for i in 0..calls {
        let text = texts[i % texts.len()];
        let reply = client.classify(request(vec![review(&format!("p{i}"), text)])).await.unwrap().into_inner();
        let task = &reply.results[0].tasks[0];
        let model = task.model.as_ref().unwrap();
        assert_eq!((model.policy_name.as_str(), model.policy_version.as_str()), ("default", "1"));
        let scores: Vec<f32> = task.scores.iter().map(|s| s.score).collect();
        *expected.entry((decision_name(task.decision).to_lowercase(), DECISIONS[strict_2(&scores)])).or_default() +=
            1.0;
    }
    let pair = [
        ("task", "abuse"),
        ("live_model", "tiny-abuse"),
        ("shadow_model", "tiny-abuse"),
        ("shadow_policy", "strict-2"),
    ];
    let compared = [pair.as_slice(), &[("outcome", "compared")]].concat();
    // Decided off the request's task, after the live answer: wait until all are counted.
    server
        .wait_for(&base, "modserve_shadow_policy_only_reviews_total", &[("shadow_policy", "strict-2")], calls as f64)
        .await;
    let now = server.scrape().await;
    assert_eq!(
        sum_where(&now, "modserve_shadow_reviews_total", &compared)
            - sum_where(&base, "modserve_shadow_reviews_total", &compared),
        calls as f64
    );
    let only = [("task", "abuse"), ("model", "tiny-abuse"), ("shadow_policy", "strict-2")];
    assert_eq!(
        sum_where(&now, "modserve_shadow_policy_only_reviews_total", &only)
            - sum_where(&base, "modserve_shadow_policy_only_reviews_total", &only),
        calls as f64
    );
    // One batch per call on the live model: the policy-only shadow added none.
    let live_batches = [("model", "tiny-abuse"), ("role", "live")];
    assert_eq!(
        sum_where(&now, "modserve_batches_total", &live_batches)
            - sum_where(&base, "modserve_batches_total", &live_batches),
        calls as f64
    );
    assert_eq!(
        sum_where(&now, "modserve_batches_total", &[("model", "tiny-abuse"), ("role", "shadow")]),
        0.0,
        "the live model never runs in the shadow role"
    );
    for live in ["allow", "review", "reject"] {
        for shadow in ["allow", "review", "reject"] {
            let cell = [pair.as_slice(), &[("live_decision", live), ("shadow_decision", shadow)]].concat();
            let got = sum_where(&now, "modserve_shadow_comparisons_total", &cell)
                - sum_where(&base, "modserve_shadow_comparisons_total", &cell);
            let want = expected.get(&(live.to_string(), shadow)).copied().unwrap_or(0.0);
            assert_eq!(got, want, "live {live} / strict-2 {shadow}");
        }
    }
    // The comparison series name both policies and versions.
    assert!(
        series(&now, "modserve_shadow_comparisons_total").iter().any(|(l, _)| {
            l.get("shadow_policy").map(String::as_str) == Some("strict-2")
                && l.get("shadow_policy_version").map(String::as_str) == Some("2")
                && l.get("live_policy").map(String::as_str) == Some("default")
                && l.get("live_policy_version").map(String::as_str) == Some("1")
        }),
        "no comparison series labelled with both policies"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_policy_replaces_the_manifest_policy_in_answers() {
    let _guard = exclusive().await;
    let text = WITH_POLICIES
        .replace("live = \"tiny-abuse\"\nshadows = [", "live = \"tiny-abuse\"\npolicy = \"strict-2\"\nshadows = [");
    // The live policy is now strict-2, so a policy-only shadow with it would repeat live.
    let text = text.replace("  { model = \"tiny-abuse\", policy = \"strict-2\", sample_rate = 1.0 },\n", "");
    let server = TestServer::start(config(&text)).await;
    let mut client = server.client().await;
    let reply = client.classify(request(vec![review("t1", "this is dumb")])).await.unwrap().into_inner();
    let task = &reply.results[0].tasks[0];
    let model = task.model.as_ref().unwrap();
    assert_eq!((model.policy_name.as_str(), model.policy_version.as_str()), ("strict-2", "2"));
    let scores: Vec<f32> = task.scores.iter().map(|s| s.score).collect();
    assert_eq!(decision_name(task.decision).to_lowercase(), DECISIONS[strict_2(&scores)]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_verdicts_are_refused_naming_the_field() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(WITH_POLICIES)).await;
    let mut client = feedback(&server).await;
    let good = verdict("v1", "you idiot", pb::Decision::Reject, "trust-safety");
    let cases: Vec<(pb::Verdict, &str)> = vec![
        (pb::Verdict { task: "spam".into(), ..good.clone() }, "verdicts[0].task"),
        (pb::Verdict { decision: pb::Decision::Unspecified as i32, ..good.clone() }, "verdicts[0].decision"),
        (pb::Verdict { review: None, ..good.clone() }, "verdicts[0].review"),
        (pb::Verdict { review: Some(review("", "text")), ..good.clone() }, "verdicts[0].review.id"),
        (pb::Verdict { review: Some(review("v1", "  ")), ..good.clone() }, "verdicts[0].review.text"),
        (pb::Verdict { labels: vec!["insult".into(), "spam".into()], ..good.clone() }, "verdicts[0].labels[1]"),
    ];
    for (verdict, field) in cases {
        let status = client.submit_verdicts(pb::SubmitVerdictsRequest { verdicts: vec![verdict] }).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    let status = client.submit_verdicts(pb::SubmitVerdictsRequest { verdicts: vec![] }).await.unwrap_err();
    assert!(status.message().starts_with("verdicts:"), "{}", status.message());
    let many = vec![good.clone(); 257];
    let status = client.submit_verdicts(pb::SubmitVerdictsRequest { verdicts: many }).await.unwrap_err();
    assert!(status.message().contains("feedback.max_verdicts_per_request"), "{}", status.message());
    // A known label is fine.
    let labelled = pb::Verdict { labels: vec!["insult".into()], ..good };
    client.submit_verdicts(pb::SubmitVerdictsRequest { verdicts: vec![labelled] }).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_the_call_and_late_verdicts_are_shed() {
    let _guard = exclusive().await;
    // Room for two verdicts; anything not scored within 200 ms is shed.
    let text = format!("{WITH_POLICIES}\n").replace(
        "[feedback]\nsources = [\"trust-safety\"]",
        "[feedback]\nsources = [\"trust-safety\"]\nqueue_capacity = 2\nmax_delay = \"200ms\"\nbatch_size = 1",
    );
    let (server, faults) = TestServer::start_faulty(config(&text)).await;
    let base = server.scrape().await;
    let mut classify = server.client().await;
    // Keep the live worker busy for 1.5 s with one slow review (a fault injected through its
    // backend), running once its batch has recorded its queue wait.
    faults.on_word("tiny-abuse", "huge", Action::Sleep(Duration::from_millis(1500)));
    let slow = tokio::spawn(async move { classify.classify(request(vec![review("slow", "huge")])).await });
    let started = [("model", "tiny-abuse"), ("role", "live"), ("stage", "queue_wait")];
    assert_eq!(server.wait_for(&base, "modserve_stage_duration_seconds_count", &started, 1.0).await, 1.0);
    let mut client = feedback(&server).await;
    let three = (0..3).map(|i| verdict(&format!("q{i}"), "you idiot", pb::Decision::Reject, "")).collect();
    let status = client.submit_verdicts(pb::SubmitVerdictsRequest { verdicts: three }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("feedback queue is full"), "{}", status.message());
    let two = (0..2).map(|i| verdict(&format!("q{i}"), "you idiot", pb::Decision::Reject, "")).collect();
    let answer = client.submit_verdicts(pb::SubmitVerdictsRequest { verdicts: two }).await.unwrap();
    assert_eq!(answer.get_ref().accepted, 2, "a refused call remembered nothing, so these are not repeats");
    let shed = [("task", "abuse"), ("outcome", "shed_deadline")];
    assert_eq!(wait_sum(&server, &base, "modserve_verdicts_received_total", &shed, 2.0).await, 2.0);
    let now = server.scrape().await;
    let received = |outcome| {
        sum_where(&now, "modserve_verdicts_received_total", &[("outcome", outcome)])
            - sum_where(&base, "modserve_verdicts_received_total", &[("outcome", outcome)])
    };
    assert_eq!(received("shed_queue_full"), 3.0);
    assert_eq!(received("counted"), 0.0);
    assert!(slow.await.unwrap().is_ok(), "the slow live call itself is answered");
    server.stop().await;
}

#[tokio::test]
async fn policies_that_do_not_fit_the_model_are_refused_at_load() {
    let _shared = shared().await;
    let text = WITH_POLICIES.replace("[policies.strict-2.thresholds.insult]", "[policies.strict-2.thresholds.spam]");
    let config = std::sync::Arc::new(config(&text));
    let env = modserve::inference::runtime::environment(&ort_lib()).unwrap();
    let backends = modserve::inference::backend::Backends::new(env);
    let errors = match modserve::control::loader::load(&config, &backends, false, None, None) {
        Ok(_) => panic!("a policy with a label the model lacks must not load"),
        Err(errors) => errors,
    };
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("tasks.abuse.shadows[1].policy: policies.strict-2") && e.contains("\"spam\"")),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_verdict_sent_twice_at_once_is_counted_once() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(WITH_POLICIES)).await;
    let (mut a, mut b) = (feedback(&server).await, feedback(&server).await);
    let mut doubled = 0;
    for round in 0..150 {
        let call = || pb::SubmitVerdictsRequest {
            verdicts: vec![verdict(&format!("race-{round}"), "you idiot", pb::Decision::Reject, "")],
        };
        let (x, y) = tokio::join!(a.submit_verdicts(call()), b.submit_verdicts(call()));
        let accepted = x.unwrap().get_ref().accepted + y.unwrap().get_ref().accepted;
        assert!(accepted >= 1, "round {round}: neither call accepted the verdict");
        doubled += usize::from(accepted > 1);
    }
    assert_eq!(doubled, 0, "rounds in which both concurrent calls counted the same verdict");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verdict_queue_is_bounded_in_bytes() {
    let _guard = exclusive().await;
    let text = WITH_POLICIES.replace(
        "[feedback]\nsources = [\"trust-safety\"]",
        "[feedback]\nsources = [\"trust-safety\"]\nqueue_max_bytes = 10000",
    );
    let server = TestServer::start(config(&text)).await;
    let mut client = feedback(&server).await;
    let long = "you idiot ".repeat(400);
    let verdicts =
        |n: usize| (0..n).map(|i| verdict(&format!("b{i}"), &long, pb::Decision::Reject, "")).collect::<Vec<_>>();
    // 3 x 4,000 bytes of review text do not fit in 10,000; the whole call is refused.
    let status = client.submit_verdicts(pb::SubmitVerdictsRequest { verdicts: verdicts(3) }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("feedback.queue_max_bytes"), "{}", status.message());
    let answer = client.submit_verdicts(pb::SubmitVerdictsRequest { verdicts: verdicts(2) }).await.unwrap();
    assert_eq!(answer.get_ref().accepted, 2, "8,000 bytes fit");
    server.stop().await;
}
