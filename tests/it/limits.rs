//! Transport limits: the per-call timeout ceiling, the idle-connection timeout and the close
//! after it. Its own test binary, so the request counters it reads are its own.

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

/// A client that is still writing when the server closes its connection after the GOAWAY (an
/// idle close here; a drain ends the same way) must not be answered with a reset: the server
/// keeps reading and dropping what it sends until it closes too. With a plain close the second
/// write fails (the first one's bytes drew a reset), and a real client writing a call at that
/// moment fails on a broken pipe instead of reading the GOAWAY that says to send it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_writing_after_the_goaway_is_not_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _guard = exclusive().await;
    let server = TestServer::start(config_with("idle_timeout = \"1s\"", ONE_MODEL)).await;
    let mut tcp = tokio::net::TcpStream::connect(server.grpc_addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(0x4, 0, 0, &[]));
    tcp.write_all(&hello).await.unwrap();
    // No call: after a second the server sends GOAWAY and ends its side (its graceful GOAWAY
    // waits for the answer to a PING).
    let sent = tokio::time::timeout(Duration::from_secs(10), read_answering_pings(&mut tcp))
        .await
        .expect("the server ends the idle connection");
    assert_eq!(goaway_code(&sent), Some(0), "GOAWAY with NO_ERROR");
    // A call the client had started meanwhile: headers (POST, http, /) and a large body.
    let mut call = h2_frame(0x1, 0x4, 1, &[0x83, 0x86, 0x84]);
    call.extend(h2_frame(0x0, 0, 1, &[0u8; 16_000]).repeat(4));
    for round in 0..3 {
        tcp.write_all(&call).await.unwrap_or_else(|e| panic!("write {round} after the GOAWAY: {e}"));
        // Time for a reset to come back, if one comes.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tcp.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await.expect("closed");
    assert!(read.is_ok() && rest.is_empty(), "a clean close after ours: {read:?}, {} bytes", rest.len());
    server.stop().await;
}

/// Reads frames until the server ends its side, answering its PINGs; returns what it sent.
async fn read_answering_pings(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut sent, mut at) = (Vec::new(), 0);
    loop {
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await.expect("a clean end, not a reset");
        if n == 0 {
            return sent;
        }
        sent.extend_from_slice(&chunk[..n]);
        while sent.len() >= at + 9 {
            let len = u32::from_be_bytes([0, sent[at], sent[at + 1], sent[at + 2]]) as usize;
            let Some(payload) = sent.get(at + 9..at + 9 + len) else { break };
            if sent[at + 3] == 0x6 && sent[at + 4] & 0x1 == 0 {
                tcp.write_all(&h2_frame(0x6, 0x1, 0, payload)).await.unwrap();
            }
            at += 9 + len;
        }
    }
}
