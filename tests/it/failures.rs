//! The error table of the server issue, end to end: queue full, deadlines, inference failures
//! and shutdown. Each test uses its own fixture model so metric deltas are its own.

use std::time::Duration;

use crate::common::*;
use modserve::app::MODERATION_SERVICE;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_resource_exhausted_and_the_rest_succeed() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(
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
    // Totals are process-wide (other tests' servers count too): compare with a scrape before.
    let base = server.scrape().await;
    let channel = server.channel().await;
    // Bounded: a burst of concurrent 64-review requests against a queue of one job. Rounds
    // repeat (at most 20) until at least one is shed; on this machine the first round does it.
    let mut shed = 0;
    let mut ok = 0;
    for _round in 0..20 {
        let mut calls = Vec::new();
        for c in 0..64 {
            let mut client = modserve::serving::grpc::pb::moderation_client::ModerationClient::new(channel.clone());
            let reviews = (0..64).map(|i| review(&format!("{c}-{i}"), "win a free prize now")).collect();
            calls.push(tokio::spawn(async move { client.classify(request(reviews)).await }));
        }
        for call in calls {
            match call.await.unwrap() {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    assert_eq!(resp.results.len(), 64);
                    assert!(resp.results.iter().all(|r| decision_name(r.tasks[0].decision) == "REJECT"));
                    ok += 1;
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    assert!(status.message().contains("tiny-fraud-v2"), "{}", status.message());
                    shed += 1;
                }
            }
        }
        if shed > 0 {
            break;
        }
    }
    assert!(shed > 0, "a queue of one never filled");
    assert!(ok > 0, "some requests must still be served");
    let scrape = server.scrape().await;
    assert_eq!(
        delta(&base, &scrape, "modserve_dropped_total", &[("model", "tiny-fraud-v2"), ("reason", "queue_full")]),
        shed as f64
    );
    let refused = |s: &str| sum_where(s, "modserve_requests_total", &[("code", "RESOURCE_EXHAUSTED")]);
    assert_eq!(refused(&scrape) - refused(&base), shed as f64);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_answers_deadline_exceeded_without_inference() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(
        r#"
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[tasks.abuse]
live = "tiny-abuse-v2"
"#,
    ))
    .await;
    let mut client = server.client().await;
    let base = server.scrape().await;
    let before = metric(&base, "modserve_batches_total", &[("model", "tiny-abuse-v2"), ("role", "live")]).unwrap();
    // A raw HTTP/2 call, because a tonic client enforces `grpc-timeout` itself and would
    // report its own timeout before the server's answer arrives; we want the server's answer.
    let (status, message) = raw_classify(server.grpc_addr, &request(vec![review("a", "you idiot")]), "1n").await;
    assert_eq!(status, Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains("deadline exceeded"), "{message}");
    let scrape = server.scrape().await;
    assert_eq!(
        metric(&scrape, "modserve_batches_total", &[("model", "tiny-abuse-v2"), ("role", "live")]),
        Some(before),
        "no inference ran"
    );
    let late = |s: &str| sum_where(s, "modserve_requests_total", &[("code", "DEADLINE_EXCEEDED")]);
    assert_eq!(late(&scrape) - late(&base), 1.0);
    // A generous deadline is met.
    let mut req = tonic::Request::new(request(vec![review("a", "you idiot")]));
    req.set_timeout(Duration::from_secs(10));
    client.classify(req).await.expect("deadline met");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_answers_internal_naming_it_and_keeps_serving() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(
        r#"
[models.tiny-faulty]
path = "tests/fixtures/tiny-faulty"
[tasks.abuse]
live = "tiny-faulty"
"#,
    ))
    .await;
    let mut client = server.client().await;
    // "explode" makes ONNX Runtime fail (Gather out of bounds); "nan" makes the model emit NaN.
    for (text, reason) in [("this will explode", "Gather"), ("nan", "not a probability")] {
        let status = client.classify(request(vec![review("a", text)])).await.expect_err(text);
        assert_eq!(status.code(), Code::Internal, "{text}: {status:?}");
        assert!(status.message().contains("model tiny-faulty"), "{text}: {}", status.message());
        assert!(status.message().contains(reason), "{text}: {}", status.message());
        // The server and the same model keep serving.
        let resp = client.classify(request(vec![review("b", "you idiot")])).await.expect("still serving").into_inner();
        assert_eq!(decision_name(resp.results[0].tasks[0].decision), "REJECT");
    }
    let scrape = server.scrape().await;
    assert_eq!(metric(&scrape, "modserve_inference_errors_total", &[("model", "tiny-faulty")]), Some(2.0));
    server.stop().await;
}

/// A live inference worker that panics (a fault injected through its backend): the panic is caught on the
/// worker thread, every job in the batch gets INTERNAL naming the model, the error is counted,
/// and the same worker thread goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_live_worker_answers_internal_and_keeps_serving() {
    let _guard = exclusive().await;
    let (server, faults) = TestServer::start_faulty(config(BASIC)).await;
    faults.on_word("tiny-abuse", "huge", Action::Panic);
    let base = server.scrape().await;
    let mut client = server.client().await;
    for round in 0..3 {
        let poisoned = request(vec![review("ok", "you idiot"), review("boom", "huge great product")]);
        let status = client.classify(poisoned).await.expect_err("the batch fails");
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        assert!(status.message().contains("model tiny-abuse"), "{}", status.message());
        assert!(status.message().contains("panicked"), "{}", status.message());
        let resp = client.classify(request(vec![review("b", "you idiot")])).await.expect("still serving");
        assert_eq!(decision_name(resp.into_inner().results[0].tasks[0].decision), "REJECT", "round {round}");
    }
    let now = server.scrape().await;
    assert_eq!(delta(&base, &now, "modserve_inference_errors_total", &[("model", "tiny-abuse")]), 3.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_health_not_serving_and_serves_until_the_drain_ends() {
    let _shared = shared().await;
    // drain_delay keeps connections open after NOT_SERVING, as behind a load balancer.
    let server = TestServer::start(config_with(
        "drain_delay = \"1s\"",
        r#"
[models.tiny-fraud]
path = "tests/fixtures/tiny-fraud"
[tasks.fraud]
live = "tiny-fraud"
"#,
    ))
    .await;
    let mut client = server.client().await;
    let mut health = server.health().await;
    let mut watch = health.watch(HealthCheckRequest { service: MODERATION_SERVICE.into() }).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    // A stream opened before shutdown.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut inbound =
        client.classify_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(request(vec![review("s1", "call me")])).await.unwrap();
    assert!(inbound.message().await.unwrap().unwrap().error.is_none());

    server.server.shutdown();
    assert_eq!(watch.message().await.unwrap().unwrap().status, ServingStatus::NotServing as i32);
    // While draining, calls that still arrive (a balancer has not moved away yet) are served,
    // not refused, and so are new messages on the open stream.
    let answer = client.classify(request(vec![review("a", "great product")])).await.expect("served while draining");
    assert_eq!(answer.into_inner().results.len(), 1);
    tx.send(request(vec![review("s2", "call me")])).await.unwrap();
    assert!(inbound.message().await.unwrap().unwrap().error.is_none());
    // When the drain delay ends the server closes: the open stream ends cleanly (the client
    // still holds its sender), instead of hanging, and the server exits.
    while let Ok(Some(_msg)) = inbound.message().await {}
    drop(tx);
    drop(watch);
    server.server.wait().await.expect("clean exit");
}
