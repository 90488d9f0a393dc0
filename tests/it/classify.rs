//! End-to-end Classify and ClassifyStream against the real server and real ONNX Runtime.

use crate::common::*;
use modserve::serving::grpc::pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_and_decisions_match_the_golden_outputs() {
    let _shared = shared().await;
    let server = TestServer::start(config(BASIC)).await;
    let mut client = server.client().await;
    for (model, task) in [("tiny-abuse", "abuse"), ("tiny-fraud", "fraud")] {
        let cases: Vec<Golden> = golden().into_iter().filter(|g| g.model == model).collect();
        assert!(cases.len() >= 5, "golden.json has cases for {model}");
        let reviews = cases.iter().enumerate().map(|(i, g)| review(&format!("r{i}"), &g.text)).collect();
        let mut req = request(reviews);
        req.tasks = vec![task.into()];
        req.request_id = format!("golden-{task}");
        let resp = client.classify(req).await.expect("classify").into_inner();
        assert_eq!(resp.request_id, format!("golden-{task}"));
        assert_eq!(resp.results.len(), cases.len());
        for (i, (result, g)) in resp.results.iter().zip(&cases).enumerate() {
            assert_eq!(result.review_id, format!("r{i}"));
            assert_eq!(result.tasks.len(), 1);
            let t = &result.tasks[0];
            assert_eq!(t.task, task);
            let m = t.model.as_ref().expect("model ref");
            assert_eq!((m.name.as_str(), m.version.as_str()), (model, "1.0.0"));
            assert_eq!((m.policy_name.as_str(), m.policy_version.as_str()), ("default", "1"));
            let scores: Vec<f32> = t.scores.iter().map(|s| s.score).collect();
            assert_close(&scores, &g.probabilities, &format!("{model} on {:?}", g.text));
            assert_eq!(decision_name(t.decision), g.decision, "{model} on {:?}", g.text);
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_named_means_every_task_in_config_order() {
    let _shared = shared().await;
    let server = TestServer::start(config(BASIC)).await;
    let mut client = server.client().await;
    let resp = client.classify(request(vec![review("a", "you idiot, win a free prize")])).await.unwrap().into_inner();
    let tasks: Vec<&str> = resp.results[0].tasks.iter().map(|t| t.task.as_str()).collect();
    assert_eq!(tasks, ["abuse", "fraud"]);
    let labels: Vec<&str> = resp.results[0].tasks[0].scores.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["insult", "threat"]);
    assert!(resp.results[0].tasks.iter().all(|t| decision_name(t.decision) == "REJECT"));

    let mut req = request(vec![review("a", "great product")]);
    req.tasks = vec!["fraud".into(), "abuse".into()];
    let resp = client.classify(req).await.unwrap().into_inner();
    let tasks: Vec<&str> = resp.results[0].tasks.iter().map(|t| t.task.as_str()).collect();
    assert_eq!(tasks, ["fraud", "abuse"], "requested order is kept");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_signals_reach_the_features_input() {
    let _shared = shared().await;
    let server = TestServer::start(config(
        r#"
[models.tiny-fraud-features]
path = "tests/fixtures/tiny-fraud-features"
[tasks.fraud]
live = "tiny-fraud-features"
"#,
    ))
    .await;
    let mut client = server.client().await;
    let cases: Vec<Golden> = golden().into_iter().filter(|g| g.model == "tiny-fraud-features").collect();
    assert!(cases.iter().any(|g| !g.features.is_empty()), "golden has feature cases");
    for (i, g) in cases.iter().enumerate() {
        let mut r = review(&format!("r{i}"), &g.text);
        // "rating" goes through the typed field, the rest through the signals map.
        for (k, v) in &g.features {
            if k == "rating" {
                r.rating = Some(*v as f32);
            } else {
                r.signals.insert(k.clone(), *v);
            }
        }
        let resp = client.classify(request(vec![r])).await.unwrap().into_inner();
        let t = &resp.results[0].tasks[0];
        let scores: Vec<f32> = t.scores.iter().map(|s| s.score).collect();
        assert_close(&scores, &g.probabilities, &format!("{:?} with {:?}", g.text, g.features));
        assert_eq!(decision_name(t.decision), g.decision);
    }
    server.stop().await;
}

/// Many clients at once, each sending different texts, with a batching window so reviews from
/// different requests share batches: every review must get its own text's scores back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_get_each_others_scores() {
    let _guard = exclusive().await;
    let server =
        TestServer::start(config(&format!("[batching]\nmax_batch_size = 16\nmax_wait = \"3ms\"\n{BASIC}"))).await;
    let cases: Vec<Golden> = golden().into_iter().filter(|g| g.model == "tiny-abuse").collect();
    let mut tasks = Vec::new();
    for client_no in 0..12usize {
        let mut client = server.client().await;
        let cases = cases.clone();
        tasks.push(tokio::spawn(async move {
            let mut checked = 0;
            for round in 0..25usize {
                // 1-3 reviews per request, texts rotating differently for every client.
                let n = 1 + (client_no + round) % 3;
                let picked: Vec<&Golden> =
                    (0..n).map(|k| &cases[(client_no * 7 + round * 3 + k) % cases.len()]).collect();
                let reviews = picked
                    .iter()
                    .enumerate()
                    .map(|(k, g)| review(&format!("c{client_no}-r{round}-{k}"), &g.text))
                    .collect();
                let mut req = request(reviews);
                req.tasks = vec!["abuse".into()];
                let resp = client.classify(req).await.expect("classify").into_inner();
                for (k, (result, g)) in resp.results.iter().zip(&picked).enumerate() {
                    assert_eq!(result.review_id, format!("c{client_no}-r{round}-{k}"));
                    let scores: Vec<f32> = result.tasks[0].scores.iter().map(|s| s.score).collect();
                    assert_close(&scores, &g.probabilities, &g.text);
                    checked += 1;
                }
            }
            checked
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, (0..12usize).map(|c| (0..25usize).map(|r| 1 + (c + r) % 3).sum::<usize>()).sum::<usize>());
    // Reviews from different requests really did share batches.
    let scrape = server.scrape().await;
    let batches = metric(&scrape, "modserve_batches_total", &[("model", "tiny-abuse")]).unwrap();
    let jobs =
        metric(&scrape, "modserve_stage_duration_seconds_count", &[("model", "tiny-abuse"), ("stage", "queue_wait")])
            .unwrap();
    assert!(batches < jobs, "expected cross-request batching: {batches} batches for {jobs} jobs");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_name_the_field_and_index() {
    let _guard = exclusive().await;
    let server =
        TestServer::start(config(&format!("[limits]\nmax_reviews_per_request = 3\nmax_text_bytes = 100\n{BASIC}")))
            .await;
    let mut client = server.client().await;
    let long = "a".repeat(101);
    let cases: Vec<(&str, pb::ClassifyRequest, &str)> = vec![
        ("no reviews", request(vec![]), "reviews: at least one review"),
        (
            "too many",
            request((0..4).map(|i| review(&i.to_string(), "ok")).collect()),
            "reviews: 4 reviews exceed the limit of 3",
        ),
        ("empty id", request(vec![review("a", "ok"), review("", "ok")]), "reviews[1].id: must not be empty"),
        ("empty text", request(vec![review("a", "")]), "reviews[0].text: must not be empty"),
        ("blank text", request(vec![review("a", "ok"), review("b", "ok"), review("c", "  \t")]), "reviews[2].text"),
        (
            "text over limit",
            request(vec![review("a", "ok"), review("b", &long)]),
            "reviews[1].text: 101 bytes exceed the limit of 100",
        ),
        (
            "duplicate ids",
            request(vec![review("x", "ok"), review("x", "ok")]),
            "reviews[1].id: duplicate of reviews[0].id",
        ),
        (
            "unknown task",
            pb::ClassifyRequest { tasks: vec!["spam".into()], ..request(vec![review("a", "ok")]) },
            "tasks[0]: unknown task \"spam\"",
        ),
    ];
    for (what, req, message) in cases {
        let status = client.classify(req).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(message), "{what}: {:?} does not contain {message:?}", status.message());
    }
    // The server keeps serving after bad input.
    client.classify(request(vec![review("a", "fine")])).await.expect("still serving");
    let scrape = server.scrape().await;
    assert_eq!(
        metric(&scrape, "modserve_requests_total", &[("method", "Classify"), ("code", "INVALID_ARGUMENT")]),
        Some(8.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_text_can_be_truncated_instead() {
    let _shared = shared().await;
    let server =
        TestServer::start(config(&format!("[limits]\nmax_text_bytes = 20\noversize_text = \"truncate\"\n{BASIC}")))
            .await;
    let mut client = server.client().await;
    // "idiot" sits past byte 20, so after truncation the text is clean.
    let mut req = request(vec![review("a", "great product great product you idiot")]);
    req.tasks = vec!["abuse".into()];
    let resp = client.classify(req).await.expect("truncated, not rejected").into_inner();
    assert_eq!(decision_name(resp.results[0].tasks[0].decision), "ALLOW");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_answers_every_message_in_order_and_survives_bad_ones() {
    let _shared = shared().await;
    let server = TestServer::start(config(BASIC)).await;
    let mut client = server.client().await;
    let texts = ["you idiot", "great product", "win a free prize", "this is dumb", "call me"];
    let mut messages = Vec::new();
    for i in 0..40 {
        let req = if i % 10 == 7 {
            // An invalid message in the middle of the stream.
            pb::ClassifyRequest { request_id: format!("m{i}"), ..request(vec![]) }
        } else {
            pb::ClassifyRequest {
                request_id: format!("m{i}"),
                ..request(vec![review(&format!("r{i}"), texts[i % texts.len()])])
            }
        };
        messages.push(req);
    }
    let outbound = tokio_stream::iter(messages);
    let mut inbound = client.classify_stream(outbound).await.expect("stream opens").into_inner();
    let mut got = 0;
    while let Some(resp) = inbound.message().await.expect("stream stays healthy") {
        assert_eq!(resp.request_id, format!("m{got}"), "responses come back in order");
        if got % 10 == 7 {
            let err = resp.error.expect("invalid message answered with an error");
            assert_eq!(err.code, Code::InvalidArgument as i32);
            assert!(err.message.contains("reviews"), "{}", err.message);
            assert!(resp.results.is_empty());
        } else {
            assert!(resp.error.is_none(), "{:?}", resp.error);
            assert_eq!(resp.results[0].review_id, format!("r{got}"));
        }
        got += 1;
    }
    assert_eq!(got, 40);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_refused_before_it_is_read() {
    let _shared = shared().await;
    let server =
        TestServer::start(config(&format!("[limits]\nmax_message_bytes = 2048\nmax_text_bytes = 1024\n{BASIC}"))).await;
    let mut client = server.client().await;
    let reviews = (0..4).map(|i| review(&i.to_string(), &"word ".repeat(200))).collect();
    let status = client.classify(request(reviews)).await.expect_err("over 2048 bytes");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("the limit is: 2048 bytes"), "{}", status.message());
    client.classify(request(vec![review("a", "fine")])).await.expect("still serving");
    server.stop().await;
}
