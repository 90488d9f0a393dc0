//! Transport limits: the per-call timeout ceiling and the idle-connection timeout. Its own test
//! binary, so the request counters it reads are its own.

use std::time::Duration;

use crate::common::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_call_timeout_caps_calls_with_no_deadline_or_a_longer_one() {
    let _guard = exclusive().await;
    let (server, faults) =
        TestServer::start_faulty(config(&format!("[limits]\nmax_call_timeout = \"300ms\"\n{ONE_MODEL}"))).await;
    let mut client = server.client().await;
    // The worker stalls 1.5 s on this review (a fault injected through its backend); the call
    // has no deadline.
    faults.on_word("tiny-abuse", "huge", Action::Sleep(Duration::from_millis(1500)));
    let slow = "you idiot huge";
    let status = client.classify(request(vec![review("slow", slow)])).await.expect_err("capped");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("limits.max_call_timeout"), "{}", status.message());
    // A caller deadline longer than the ceiling is capped the same way (raw HTTP/2 so the
    // client does not enforce its own 10 s timeout first).
    let (code, message) = raw_classify(server.grpc_addr, &request(vec![review("slow2", slow)]), "10S").await;
    assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains("max_call_timeout"), "{message}");
    // Once the stall is over, ordinary calls are answered.
    let mut answered = None;
    for _ in 0..100 {
        match client.classify(request(vec![review("ok", "you idiot")])).await {
            Ok(r) => {
                answered = Some(r.into_inner());
                break;
            }
            Err(s) if s.code() == Code::DeadlineExceeded => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(s) => panic!("{s:?}"),
        }
    }
    let answered = answered.expect("served after the stall");
    assert_eq!(decision_name(answered.results[0].tasks[0].decision), "REJECT");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_gets_goaway_and_the_client_reconnects() {
    let _guard = exclusive().await;
    let server = TestServer::start(config_with("idle_timeout = \"1s\"", ONE_MODEL)).await;
    let base = server.scrape().await;
    let mut client = server.client().await;
    client.classify(request(vec![review("a", "you idiot")])).await.expect("first call");
    // No call for over a second: the server closes the connection (GOAWAY) and counts it.
    let closed = server.wait_for(&base, "modserve_connections_closed_idle_total", &[("listener", "grpc")], 1.0).await;
    assert!(closed >= 1.0, "idle connections closed: {closed}");
    // The same client reconnects transparently.
    let answer = client.classify(request(vec![review("b", "you idiot")])).await.expect("after GOAWAY");
    assert_eq!(decision_name(answer.into_inner().results[0].tasks[0].decision), "REJECT");
    server.stop().await;
}
