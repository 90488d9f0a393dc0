//! One hostile caller must not stall everyone (issue 14): crafted text, stalled uploads, silent
//! connections, a locked-out metrics port, malformed bodies and echoed values, each against the
//! real server. Its own test binary, so the counters it reads are its own.

use std::time::Duration;

use crate::common::*;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use modserve::serving::grpc::pb;
use modserve::serving::grpc::pb::moderation_client::ModerationClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

/// `modserve_transport_refusals_total` on the gRPC listener for `reason`, since `base`.
async fn refusals(server: &TestServer, base: &str, reason: &str) -> f64 {
    let now = server.scrape().await;
    delta(base, &now, "modserve_transport_refusals_total", &[("listener", "grpc"), ("reason", reason)])
}

/// Waits until the server closes `stream` (EOF or reset); panics after `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 4096];
    let wait = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // Whatever the server sent first (its SETTINGS, a GOAWAY): keep reading.
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, wait).await.expect("the server closed the connection");
}

/// A copy of the tiny-abuse fixture whose tokenizer has an e-mail pattern with unbounded
/// repetitions (the shape the bundled tokenizer shipped with before issue 14), and a length
/// limit of 256 tokens, so the crafted probes are 8,192 characters long.
fn package_with_backtracking_tokenizer(dir: &std::path::Path) -> std::path::PathBuf {
    let package = dir.join("backtracking");
    std::fs::create_dir_all(&package).unwrap();
    let fixture = fixture("tiny-abuse");
    std::fs::copy(fixture.join("model.onnx"), package.join("model.onnx")).unwrap();
    let mut tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("tokenizer.json")).unwrap()).unwrap();
    tokenizer["normalizer"] = serde_json::json!({
        "type": "Sequence",
        "normalizers": [
            {"type": "Lowercase"},
            {"type": "Replace", "pattern": {"Regex": "[^\\s@<>()\\[\\]]+@[^\\s@<>()\\[\\]]+\\.[a-z]{2,}"}, "content": " xxemail "}
        ]
    });
    let tokenizer = serde_json::to_vec(&tokenizer).unwrap();
    std::fs::write(package.join("tokenizer.json"), &tokenizer).unwrap();
    let sha = |bytes: &[u8]| modserve::inference::model::package::sha256_hex(bytes);
    let manifest = std::fs::read_to_string(fixture.join("manifest.toml")).unwrap();
    let old_sha = sha(&std::fs::read(fixture.join("tokenizer.json")).unwrap());
    let manifest =
        manifest.replace(&old_sha, &sha(&tokenizer)).replace("max_sequence_length = 64", "max_sequence_length = 256");
    assert!(manifest.contains(&sha(&tokenizer)) && manifest.contains("= 256"), "{manifest}");
    std::fs::write(package.join("manifest.toml"), manifest).unwrap();
    package
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokenizer_that_backtracks_on_crafted_text_is_refused_at_load() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let package = package_with_backtracking_tokenizer(dir.path());
    let body = format!(
        "[models.tiny-abuse]\npath = {:?}\n[tasks.abuse]\nlive = \"tiny-abuse\"\n",
        package.display().to_string()
    );
    // The listeners come up first; the load fails and the server stops on its own.
    let server = modserve::app::Server::start(config(&body)).await.expect("listeners bound");
    let outcome = tokio::time::timeout(Duration::from_secs(60), server.wait()).await.expect("load finished");
    let error = format!("{:#}", outcome.expect_err("a tokenizer that backtracks quadratically was accepted"));
    assert!(error.contains("tokenizer.json"), "names the file: {error}");
    assert!(error.contains("backtracks super-linearly"), "says why: {error}");
    assert!(error.contains("8192 characters"), "says how long the probe was: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_is_checked_per_review_while_a_batch_is_tokenized() {
    let _guard = exclusive().await;
    let (server, faults) = TestServer::start_faulty(config(ONE_MODEL)).await;
    let base = server.scrape().await;
    // Each review stalls the worker 300 ms while it is tokenized (a fault injected through its
    // backend); the call's deadline passes during the second, so the third and fourth are never
    // tokenized and the job is dropped rather than run for a caller who has gone.
    faults.slow_tokenizing("tiny-abuse", Duration::from_millis(300), 4);
    let reviews = (0..4).map(|i| review(&format!("r{i}"), "you idiot")).collect();
    let (code, message) = raw_classify(server.grpc_addr, &request(reviews), "500m").await;
    assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
    let dropped =
        server.wait_for(&base, "modserve_dropped_total", &[("model", "tiny-abuse"), ("reason", "deadline")], 1.0).await;
    assert_eq!(dropped, 1.0, "the expired job was dropped while tokenizing, not run");
    let batches = delta(&base, &server.scrape().await, "modserve_batches_total", &[("model", "tiny-abuse")]);
    assert_eq!(batches, 0.0, "no batch ran for it");
    server.stop().await;
}

type Upload = StreamBody<tokio_stream::wrappers::ReceiverStream<Result<Frame<bytes::Bytes>, std::convert::Infallible>>>;

/// Starts a unary Classify on `sender` whose gRPC prefix declares `declared` bytes, sends only
/// `sent` of them and holds the stream open; returns the task awaiting (grpc-status, message).
fn stalled_upload(
    sender: &hyper::client::conn::http2::SendRequest<Upload>,
    addr: std::net::SocketAddr,
    declared: u32,
    sent: usize,
    timeout: &str,
) -> tokio::task::JoinHandle<(i32, String)> {
    stalled_call(sender, addr, "/modserve.v1.Moderation/Classify", declared, sent, timeout)
}

/// An HTTP/2 connection to `addr` for raw uploads, its driver running in the background.
async fn h2_sender(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<Upload> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// `stalled_upload` on the method at `path`.
fn stalled_call(
    sender: &hyper::client::conn::http2::SendRequest<Upload>,
    addr: std::net::SocketAddr,
    path: &str,
    declared: u32,
    sent: usize,
    timeout: &str,
) -> tokio::task::JoinHandle<(i32, String)> {
    let mut data = vec![0u8];
    data.extend_from_slice(&declared.to_be_bytes());
    data.extend(std::iter::repeat_n(b'x', sent));
    held_call(sender, addr, path, data, timeout, false)
}

/// A call on `sender` to the method at `path` that sends `data` and holds its upload open until
/// the answer is complete, or with `never_close` after it too (as a client that never ends its
/// side); returns the task awaiting (grpc-status, message).
fn held_call(
    sender: &hyper::client::conn::http2::SendRequest<Upload>,
    addr: std::net::SocketAddr,
    path: &str,
    data: Vec<u8>,
    timeout: &str,
    never_close: bool,
) -> tokio::task::JoinHandle<(i32, String)> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let request = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(body)
        .unwrap();
    let mut sender = sender.clone();
    tokio::spawn(async move {
        let response = sender.send_request(request);
        tx.send(Ok(Frame::data(bytes::Bytes::from(data)))).await.unwrap();
        let response = response.await.expect("an answer");
        let headers = response.headers().clone();
        // Keep the upload open (tx alive) until the answer is complete.
        let collected = response.into_body().collect().await;
        if never_close {
            std::mem::forget(tx);
        }
        let trailers = collected.ok().and_then(|c| c.trailers().cloned()).unwrap_or_default();
        let get =
            |name: &str| headers.get(name).or_else(|| trailers.get(name)).map(|v| v.to_str().unwrap().to_string());
        let status = get("grpc-status").expect("grpc-status").parse().unwrap();
        (status, get("grpc-message").map(|m| percent_decode(&m)).unwrap_or_default())
    })
}

/// A SubmitVerdicts message larger than the room left in the verdict queue is refused at its
/// 5-byte prefix, before its body is read (the upload here never finishes), and counted as
/// a transport refusal; one that fits is read as usual (it reserves its upload bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_message_larger_than_the_queues_room_is_refused_before_it_is_read() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(&format!(
        "[limits]\nmax_call_timeout = \"30s\"\n[feedback]\nqueue_max_bytes = 100000\n{ONE_MODEL}"
    )))
    .await;
    let base = server.scrape().await;
    let sender = h2_sender(server.grpc_addr).await;
    let addr = server.grpc_addr;
    let path = "/modserve.v1.Feedback/SubmitVerdicts";
    // 2,000,000 declared bytes, 100 sent: refused at once, though the message never completes.
    let big = stalled_call(&sender, addr, path, 2_000_000, 100, "20S");
    let (code, message) = tokio::time::timeout(Duration::from_secs(10), big).await.expect("refused at once").unwrap();
    assert_eq!(code, Code::ResourceExhausted as i32, "{message}");
    assert!(message.contains("feedback queue is full") && message.contains("2000000 bytes"), "{message}");
    assert!(
        message.contains("100000 bytes of review text") && message.contains("feedback.queue_max_bytes"),
        "{message}"
    );
    let refused = [("listener", "grpc"), ("reason", "feedback_queue_full")];
    assert_eq!(delta(&base, &server.scrape().await, "modserve_transport_refusals_total", &refused), 1.0);
    // 60,000 declared bytes fit in the queue's room: the upload is read (its bytes reserved)
    // until its deadline cuts it.
    let fits = stalled_call(&sender, addr, path, 60_000, 100, "1S");
    let receiving = [("listener", "grpc")];
    let reserved = server.wait_gauge("modserve_request_bytes_receiving", &receiving, 60_000.0).await;
    assert_eq!(reserved, Some(60_000.0), "the message that fits is being received");
    let (code, message) = tokio::time::timeout(Duration::from_secs(10), fits).await.expect("cut").unwrap();
    assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
    assert_eq!(delta(&base, &server.scrape().await, "modserve_transport_refusals_total", &refused), 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_are_bounded_in_bytes_and_cut_at_their_deadline() {
    let _guard = exclusive().await;
    let server = TestServer::start(config_with(
        "max_buffered_request_bytes_per_connection = 131072",
        &format!("[limits]\nmax_message_bytes = 65536\nmax_call_timeout = \"30s\"\n{ONE_MODEL}"),
    ))
    .await;
    let base = server.scrape().await;
    let sender = h2_sender(server.grpc_addr).await;
    let addr = server.grpc_addr;
    // Two messages of 60,000 bytes fit in the connection's 131,072; both stall after 100 bytes.
    let first = stalled_upload(&sender, addr, 60_000, 100, "1S");
    let second = stalled_upload(&sender, addr, 60_000, 100, "1S");
    let receiving = [("listener", "grpc")];
    let reserved = server.wait_gauge("modserve_request_bytes_receiving", &receiving, 120_000.0).await;
    assert_eq!(reserved, Some(120_000.0), "both messages reserved their declared length");
    // A third does not fit: refused at its prefix, long before any deadline.
    let third = stalled_upload(&sender, addr, 60_000, 100, "20S");
    let (code, message) = tokio::time::timeout(Duration::from_secs(10), third).await.expect("refused at once").unwrap();
    assert_eq!(code, Code::ResourceExhausted as i32, "{message}");
    assert!(message.contains("max_buffered_request_bytes_per_connection"), "{message}");
    // The stalled two are cut at their deadline, counted from the arrival of their headers
    // (the handler never saw them: their messages never completed).
    for stalled in [first, second] {
        let (code, message) = tokio::time::timeout(Duration::from_secs(10), stalled).await.expect("cut").unwrap();
        assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
        assert!(message.contains("still being received"), "{message}");
    }
    let now = server.scrape().await;
    let refused = |reason: &str| delta(&base, &now, "modserve_transport_refusals_total", &[("reason", reason)]);
    assert_eq!(refused("upload_budget_connection"), 1.0);
    assert_eq!(refused("upload_deadline"), 2.0);
    // Their bytes were given back: the gauge is back at zero, and the same connection can
    // upload a whole message again.
    let released = server.wait_gauge("modserve_request_bytes_receiving", &receiving, 0.0).await;
    assert_eq!(released, Some(0.0), "the cut uploads gave their reservation back");
    let mut client = server.client().await;
    client.classify(request(vec![review("ok", "you idiot")])).await.expect("served after the stalls");
    server.stop().await;
}

/// A Classify call takes its turn once its request is in: calls whose uploads stall (over gRPC
/// and over HTTP/JSON), twice as many as there are turns, leave another caller served; while
/// they stall their bytes stay reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_hold_no_turn() {
    let _guard = exclusive().await;
    let server = TestServer::start(config_with(
        "max_calls_in_progress = 2\nhttp_listen = \"127.0.0.1:0\"",
        &format!("[limits]\nmax_call_timeout = \"60s\"\n{ONE_MODEL}"),
    ))
    .await;
    let sender = h2_sender(server.grpc_addr).await;
    let stalled: Vec<_> = (0..2).map(|_| stalled_upload(&sender, server.grpc_addr, 1000, 10, "60S")).collect();
    let receiving = [("listener", "grpc")];
    let reserved = server.wait_gauge("modserve_request_bytes_receiving", &receiving, 2000.0).await;
    assert_eq!(reserved, Some(2000.0), "both uploads under way");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut http = TcpStream::connect(server.http_addr.expect("http_listen is set")).await.unwrap();
        let head = "POST /v1/classify HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"reviews\"";
        http.write_all(head.as_bytes()).await.unwrap();
        held.push(http);
    }
    let receiving = [("listener", "http")];
    let reserved = server.wait_gauge("modserve_request_bytes_receiving", &receiving, 2000.0).await;
    assert_eq!(reserved, Some(2000.0), "both HTTP bodies under way");
    let mut client = server.client().await;
    let mut call = tonic::Request::new(request(vec![review("ok", "you idiot")]));
    call.set_timeout(Duration::from_secs(20));
    client.classify(call).await.expect("served while four uploads stall");
    for call in stalled {
        call.abort();
    }
    drop(held);
    server.stop().await;
}

/// The held call, and the sender and answers of the stream.
type HeldAndStream = (
    tokio::task::JoinHandle<Result<tonic::Response<pb::ClassifyResponse>, tonic::Status>>,
    tokio::sync::mpsc::Sender<pb::ClassifyRequest>,
    tonic::Streaming<pb::ClassifyResponse>,
);

/// A Classify call that holds its turn (its inference held until `faults.release()`), and a
/// ClassifyStream opened behind it on another connection, whose messages wait for that turn
/// when the server has `max_calls_in_progress = 1`.
async fn stream_behind_a_held_call(server: &TestServer, faults: &Faults) -> HeldAndStream {
    faults.on_word("tiny-abuse", "huge", Action::Hold);
    let mut holder = server.client().await;
    let held = tokio::spawn(async move { holder.classify(request(vec![review("held", "huge great product")])).await });
    faults.wait_begun(1).await;
    let mut client = server.client().await;
    let (messages, outbound) = tokio::sync::mpsc::channel(4);
    let inbound =
        client.classify_stream(tokio_stream::wrappers::ReceiverStream::new(outbound)).await.unwrap().into_inner();
    (held, messages, inbound)
}

/// A ClassifyStream's messages that wait for a turn keep their bytes reserved from the upload
/// budgets, as a waiting Classify call does: otherwise streams would hold decoded messages that
/// no budget counts. Before, a message's reservation ended when it was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_messages_waiting_for_a_turn_stay_reserved() {
    let _guard = exclusive().await;
    let body = format!("[batching]\nmax_batch_size = 1\n{ONE_MODEL}");
    let (server, faults) = TestServer::start_faulty(config_with("max_calls_in_progress = 1\n", &body)).await;
    // A call holds the only turn while a stream's three messages wait for it.
    let (held, messages, mut inbound) = stream_behind_a_held_call(&server, &faults).await;
    let mut declared = 0.0;
    for i in 0..3 {
        let message = request(vec![review(&format!("s{i}"), &"great product ".repeat(500))]);
        declared += prost::Message::encoded_len(&message) as f64;
        messages.send(message).await.unwrap();
    }
    assert_eq!(server.wait_gauge("modserve_calls_waiting", &[], 3.0).await, Some(3.0), "all three wait");
    let receiving = [("listener", "grpc")];
    let reserved = server.wait_gauge("modserve_request_bytes_receiving", &receiving, declared).await;
    assert_eq!(reserved, Some(declared), "the waiting messages' bytes are reserved");
    faults.release();
    held.await.unwrap().expect("the held call is served");
    for i in 0..3 {
        let answer = inbound.message().await.unwrap().expect("an answer");
        assert!(answer.error.is_none(), "message {i}: {answer:?}");
    }
    let given_back = server.wait_gauge("modserve_request_bytes_receiving", &receiving, 0.0).await;
    assert_eq!(given_back, Some(0.0), "given back once their turns came");
    drop(messages);
    server.stop().await;
}

/// Waiting stream messages past the connection's upload budget: the next one is refused at its
/// prefix, and the stream ends RESOURCE_EXHAUSTED naming the key. Answers stay in order, so the
/// messages read before it are answered first if the handler had taken them (when they came in
/// separate reads), or not at all if the refusal came in the same read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_messages_waiting_past_the_connection_budget_end_the_stream() {
    let _guard = exclusive().await;
    let body = format!(
        "[limits]\nmax_text_bytes = 10000\nmax_message_bytes = 20000\n[batching]\nmax_batch_size = 1\n{ONE_MODEL}"
    );
    let server_keys = "max_calls_in_progress = 1\nmax_buffered_request_bytes_per_connection = 20000\n";
    let (server, faults) = TestServer::start_faulty(config_with(server_keys, &body)).await;
    let (held, messages, mut inbound) = stream_behind_a_held_call(&server, &faults).await;
    // Three messages of about 7 KB: two fit in 20,000 bytes while they wait, the third does not.
    let base = server.scrape().await;
    for i in 0..3 {
        messages.send(request(vec![review(&format!("s{i}"), &"great product ".repeat(500))])).await.unwrap();
    }
    // The third is refused while the first two still wait behind the held call.
    let labels = [("listener", "grpc"), ("reason", "upload_budget_connection")];
    let refused = server.wait_for(&base, "modserve_transport_refusals_total", &labels, 1.0).await;
    assert_eq!(refused, 1.0, "the third message refused while the others wait");
    faults.release();
    let mut answered = 0;
    let status = loop {
        match inbound.message().await {
            Ok(Some(answer)) => {
                assert!(
                    answer.error.is_none() && answer.results.len() == 1,
                    "an answer before the refusal: {answer:?}"
                );
                answered += 1;
            }
            Ok(None) => panic!("the stream ended without the refusal after {answered} answers"),
            Err(status) => break status,
        }
    };
    assert!(answered <= 2, "only the two messages before the refused one: {answered}");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_buffered_request_bytes_per_connection"), "{status:?}");
    held.await.unwrap().expect("the held call is served");
    drop(messages);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_peer_limit_are_closed_at_once() {
    let _guard = exclusive().await;
    let server = TestServer::start(config_with("max_connections_per_peer = 2", ONE_MODEL)).await;
    let base = server.scrape().await;
    let _held =
        [TcpStream::connect(server.grpc_addr).await.unwrap(), TcpStream::connect(server.grpc_addr).await.unwrap()];
    let open = [("listener", "grpc")];
    assert_eq!(server.wait_gauge("modserve_connections_open", &open, 2.0).await, Some(2.0), "both accepted");
    let mut third = TcpStream::connect(server.grpc_addr).await.unwrap();
    closed_by_server(&mut third, Duration::from_secs(5)).await;
    let refused = refusals(&server, &base, "peer_connection_limit").await;
    assert!(refused >= 1.0, "counted: {refused}");
    drop(_held);
    // Their slots come back once they close.
    let mut answered = false;
    for _ in 0..50 {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr)).unwrap();
        if let Ok(channel) = channel.connect().await {
            let mut client = ModerationClient::new(channel);
            if client.classify(request(vec![review("ok", "you idiot")])).await.is_ok() {
                answered = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "a new connection is served once the held ones closed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_the_handshake_are_closed() {
    let _guard = exclusive().await;
    let server = TestServer::start(config_with("handshake_timeout = \"300ms\"", ONE_MODEL)).await;
    let base = server.scrape().await;
    let mut silent = TcpStream::connect(server.grpc_addr).await.unwrap();
    let mut half = TcpStream::connect(server.grpc_addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    closed_by_server(&mut silent, Duration::from_secs(10)).await;
    closed_by_server(&mut half, Duration::from_secs(10)).await;
    let refused = refusals(&server, &base, "handshake_timeout").await;
    assert_eq!(refused, 2.0);
    // A real client is unaffected, on the same connection long past the handshake timeout.
    let mut client = server.client().await;
    client.classify(request(vec![review("ok", "you idiot")])).await.expect("served");
    tokio::time::sleep(Duration::from_millis(800)).await;
    client.classify(request(vec![review("ok2", "you idiot")])).await.expect("served again on the same connection");
    let refused = refusals(&server, &base, "handshake_timeout").await;
    assert_eq!(refused, 2.0, "only the two that never finished");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_closes_its_connection_and_is_counted() {
    let _guard = exclusive().await;
    let server = TestServer::start(config_with("", ONE_MODEL)).await;
    let base = server.scrape().await;
    let mut flood = TcpStream::connect(server.grpc_addr).await.unwrap();
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(h2_frame(0x4, 0, 0, &[]));
    // 200 calls opened and cancelled in one write: each reset before the server took its call.
    for stream in (1..400).step_by(2) {
        // HPACK: :method POST, :scheme http, :path / (static table entries); END_HEADERS.
        bytes.extend(h2_frame(0x1, 0x4, stream, &[0x83, 0x86, 0x84]));
        bytes.extend(h2_frame(0x3, 0, stream, &8u32.to_be_bytes()));
    }
    flood.write_all(&bytes).await.unwrap();
    let mut sent = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), flood.read_to_end(&mut sent)).await;
    assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "the server closed the connection");
    assert_eq!(goaway_code(&sent), Some(0xb), "GOAWAY with ENHANCE_YOUR_CALM");
    assert_eq!(refusals(&server, &base, "protocol_error").await, 1.0);
    // Another caller is served meanwhile and after.
    let mut client = server.client().await;
    client.classify(request(vec![review("ok", "you idiot")])).await.expect("served");
    server.stop().await;
}

/// One model, a 60 s `shutdown_grace` (`config_with` sets 5 s) and `server` keys.
fn long_grace_config(server: &str) -> modserve::config::Config {
    let text = format!(
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nshutdown_grace = \"60s\"\n\
         {server}\nonnxruntime_lib = {:?}\n{ONE_MODEL}",
        ort_lib().display().to_string()
    );
    modserve::config::Config::parse(&text, &repo().join("test.toml"), &Default::default()).unwrap()
}

/// Stops a server made with `long_grace_config`; panics if the stop waits out its 60 s grace.
/// Not a speed assertion: with the bugs these tests guard, stop waits the whole grace.
async fn stops_before_the_grace(server: TestServer, held_by: &str) {
    if tokio::time::timeout(Duration::from_secs(20), server.stop()).await.is_err() {
        panic!("shutdown did not wait out the grace for {held_by}");
    }
}

/// A health Watch answers only when the status changes, so it stays open for the client's life:
/// at shutdown it ends UNAVAILABLE (after NOT_SERVING) instead of holding the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_health_watch_ends_at_shutdown_instead_of_holding_the_grace() {
    use tonic_health::pb::HealthCheckRequest;
    let _guard = exclusive().await;
    let server = TestServer::start(long_grace_config("")).await;
    let mut health = server.health().await;
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert!(watch.message().await.unwrap().is_some(), "the current status");
    let watching = tokio::spawn(async move {
        loop {
            match watch.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    });
    stops_before_the_grace(server, "an open health Watch").await;
    assert_eq!(watching.await.unwrap(), Some(Code::Unavailable), "the Watch ended with the shutdown");
}

/// A reflection stream reads questions until its client stops: one whose client neither asks
/// more nor closes its side ends UNAVAILABLE at shutdown, both ways, instead of holding the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_reflection_stream_ends_at_shutdown_instead_of_holding_the_grace() {
    let _guard = exclusive().await;
    let server = TestServer::start(long_grace_config("")).await;
    let sender = h2_sender(server.grpc_addr).await;
    // One question (list_services, field 7, empty), and the request left open.
    let path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    let open = held_call(&sender, server.grpc_addr, path, vec![0, 0, 0, 0, 2, 0x3a, 0], "600S", true);
    // Setup, not a measurement: the stream reaches the server well within this.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!open.is_finished(), "the stream is open");
    stops_before_the_grace(server, "an open reflection stream").await;
    let (code, message) = open.await.unwrap();
    assert_eq!(code, Code::Unavailable as i32, "{message}");
}

/// Health Watch and reflection streams are bounded per connection: one over is refused at once
/// and counted; a closed one gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_watch_streams_are_bounded_per_connection() {
    use tonic_health::pb::HealthCheckRequest;
    let _guard = exclusive().await;
    let server = TestServer::start(config_with("", ONE_MODEL)).await;
    let base = server.scrape().await;
    let mut health = server.health().await;
    let mut open = Vec::new();
    for _ in 0..modserve::serving::grpc::endless::MAX_PER_CONNECTION {
        open.push(health.watch(HealthCheckRequest { service: String::new() }).await.expect("within the bound"));
    }
    let over = health.watch(HealthCheckRequest { service: String::new() }).await.map(|_| ()).unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    assert!(over.message().contains("Watch"), "{over:?}");
    assert_eq!(refusals(&server, &base, "endless_stream_limit").await, 1.0);
    open.pop();
    let mut again = None;
    for _ in 0..50 {
        match health.watch(HealthCheckRequest { service: String::new() }).await {
            Ok(watch) => {
                again = Some(watch);
                break;
            }
            // The closed stream's place comes back once the server has seen it close.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(again.is_some(), "a closed Watch gives its place back");
    drop((open, again));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_does_not_hold_shutdown_for_the_grace() {
    let _guard = exclusive().await;
    // A long grace and handshake timeout: only the drain's own rule can end the connection early.
    let server = TestServer::start(long_grace_config("handshake_timeout = \"60s\"")).await;
    let _silent = TcpStream::connect(server.grpc_addr).await.unwrap();
    let mut half = TcpStream::connect(server.grpc_addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let open = [("listener", "grpc")];
    assert_eq!(server.wait_gauge("modserve_connections_open", &open, 2.0).await, Some(2.0), "both accepted");
    stops_before_the_grace(server, "connections with no call").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_answers_while_slow_clients_hold_every_slot() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(ONE_MODEL)).await;
    // More trickling clients than the port has slots, each with an unfinished request head.
    let mut slow = Vec::new();
    for _ in 0..80 {
        let mut stream = TcpStream::connect(server.metrics_addr).await.unwrap();
        stream.write_all(b"GET /metr").await.unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), http_get(server.metrics_addr, "/health/ready"))
        .await
        .expect("the probe was answered");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let scrape = tokio::time::timeout(Duration::from_secs(10), scrape(server.metrics_addr)).await.expect("scraped");
    assert!(scrape.contains("modserve_requests_total") || scrape.contains("modserve_build_info"), "{scrape}");
    drop(slow);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_protobuf_is_invalid_argument_and_counted() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(ONE_MODEL)).await;
    let base = server.scrape().await;
    let (code, message) = raw_call(server.grpc_addr, "Classify", &[0xff, 0xff, 0xff, 0x07], "5S").await;
    assert_eq!(code, Code::InvalidArgument as i32, "{message}");
    let counted = delta(
        &base,
        &server.scrape().await,
        "modserve_requests_total",
        &[("method", "Classify"), ("code", "INVALID_ARGUMENT")],
    );
    assert_eq!(counted, 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_task_name_is_quoted_only_in_part() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(ONE_MODEL)).await;
    let mut client = server.client().await;
    let mut req = request(vec![review("a", "great product")]);
    req.tasks = vec!["x".repeat(1 << 20)];
    let status = client.classify(req).await.expect_err("unknown task");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", &status.message()[..status.message().len().min(200)]);
    assert!(status.message().len() < 400, "{} bytes echoed", status.message().len());
    assert!(status.message().contains("1048576 bytes"), "{}", status.message());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_call_goes_before_queued_large_ones() {
    let _guard = exclusive().await;
    let (server, faults) = TestServer::start_faulty(config(ONE_MODEL)).await;
    // Large jobs (over 8 KiB of text) that stall the worker (a fault injected through its
    // backend): the first until every call is queued, the others 300 ms each.
    faults.on_word("tiny-abuse", "huge", Action::Hold);
    let large = format!("huge {}", "great product ".repeat(700));
    let finished = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let call = |name, text| spawn_call(&server, finished.clone(), name, text);
    let base = server.scrape().await;
    let first = call("large-1", large.clone()).await;
    // large-1 is running once its batch has recorded its queue wait.
    let started = [("model", "tiny-abuse"), ("stage", "queue_wait")];
    assert_eq!(server.wait_for(&base, "modserve_stage_duration_seconds_count", &started, 1.0).await, 1.0);
    let queued = [call("large-2", large.clone()).await, call("large-3", large.clone()).await];
    let depth = [("model", "tiny-abuse"), ("role", "live")];
    assert_eq!(server.wait_for(&base, "modserve_queue_depth", &depth, 2.0).await, 2.0, "both queued");
    let short = call("short", "you idiot".to_string()).await;
    // Served while large-1 still holds its worker (a liveness bound, not a speed one: without
    // its own turn it would wait out the hold, 30 s).
    tokio::time::timeout(Duration::from_secs(20), short).await.expect("served beside the held call").unwrap();
    faults.on_word("tiny-abuse", "huge", Action::Sleep(Duration::from_millis(300)));
    faults.release();
    for task in [first].into_iter().chain(queued) {
        task.await.unwrap();
    }
    let order = finished.lock().unwrap().clone();
    let at = |name| order.iter().position(|n| *n == name).unwrap();
    // The large ones queued before the short call each wait for large-1 and then 300 ms.
    assert!(
        at("short") < at("large-2") && at("short") < at("large-3"),
        "the short call waited only for the job running: {order:?}"
    );
    server.stop().await;
}

/// Starts one Classify of `text` on its own connection; its name goes into `finished` when
/// answered.
async fn spawn_call(
    server: &TestServer,
    finished: std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>,
    name: &'static str,
    text: String,
) -> tokio::task::JoinHandle<()> {
    let mut client = server.client().await;
    tokio::spawn(async move {
        client.classify(request(vec![review(name, &text)])).await.expect(name);
        finished.lock().unwrap().push(name);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_countless_tiny_reviews_is_refused_before_decoding() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(ONE_MODEL)).await;
    let base = server.scrape().await;
    // 300,000 empty reviews (field 1, length 0): 600 KB that prost would turn into 300,000
    // structs before validation could count them.
    let payload: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 300_000).flatten().collect();
    let (code, message) = raw_call(server.grpc_addr, "Classify", &payload, "10S").await;
    assert_eq!(code, Code::InvalidArgument as i32, "{message}");
    assert!(message.contains("refused before decoding"), "{message}");
    let counted = delta(
        &base,
        &server.scrape().await,
        "modserve_requests_total",
        &[("method", "Classify"), ("code", "INVALID_ARGUMENT")],
    );
    assert_eq!(counted, 1.0);
    server.stop().await;
}

/// Calls' names and outcomes, in the order they were answered.
type Finished = std::sync::Arc<std::sync::Mutex<Vec<(String, Result<(), tonic::Status>)>>>;

/// Starts `n` Classify calls of `text` on one connection; each call's name and outcome go into
/// `finished` when answered.
async fn spawn_calls_on_one_connection(
    server: &TestServer,
    finished: &Finished,
    prefix: &str,
    n: usize,
    text: &str,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = server.client().await;
    (0..n)
        .map(|i| {
            let (mut client, finished, name, text) =
                (client.clone(), finished.clone(), format!("{prefix}-{i}"), text.to_string());
            tokio::spawn(async move {
                let outcome = client.classify(request(vec![review(&name, &text)])).await.map(|_| ());
                finished.lock().unwrap().push((name, outcome));
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_connection_cannot_crowd_another_callers_call_out_of_the_queue() {
    let _guard = exclusive().await;
    let body = format!("[batching]\nmax_batch_size = 1\nqueue_capacity = 4\n{ONE_MODEL}");
    let (server, faults) = TestServer::start_faulty(config_with("max_calls_in_progress = 1000\n", &body)).await;
    // The flood's running call holds its worker until the other caller's call is queued (a
    // timed stall left too short a window to see the queue full on a loaded machine); then
    // each flood call stalls 300 ms, so the order calls are answered in is the queue's.
    faults.on_word("tiny-abuse", "huge", Action::Hold);
    let finished = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let base = server.scrape().await;
    // One connection keeps 12 calls going: one runs, four fill the queue, the rest are refused.
    let flood = spawn_calls_on_one_connection(&server, &finished, "flood", 12, "huge great product").await;
    let depth = [("model", "tiny-abuse"), ("role", "live")];
    assert_eq!(server.wait_for(&base, "modserve_queue_depth", &depth, 4.0).await, 4.0, "the flood fills the queue");
    let full = [("model", "tiny-abuse"), ("role", "live"), ("reason", "queue_full")];
    assert_eq!(server.wait_for(&base, "modserve_dropped_total", &full, 7.0).await, 7.0, "all twelve are in");
    let normal = spawn_calls_on_one_connection(&server, &finished, "normal", 1, "great product").await;
    let fair_share = [("model", "tiny-abuse"), ("role", "live"), ("reason", "fair_share")];
    assert_eq!(server.wait_for(&base, "modserve_dropped_total", &fair_share, 1.0).await, 1.0, "it took a queued place");
    faults.on_word("tiny-abuse", "huge", Action::Sleep(Duration::from_millis(300)));
    faults.release();
    for task in normal.into_iter().chain(flood) {
        task.await.unwrap();
    }
    let finished = finished.lock().unwrap().clone();
    let normal = finished.iter().position(|(name, _)| name == "normal-0").unwrap();
    assert!(finished[normal].1.is_ok(), "the other caller's call is served: {:?}", finished[normal].1);
    // Before it: the flood's refusals, the call that was running, and at most one queued call
    // (the flood's turn came first).
    let served_before = finished[..normal].iter().filter(|(_, outcome)| outcome.is_ok()).count();
    assert!(served_before <= 2, "{served_before} flood calls were served before it: {finished:?}");
    let pushed_out: Vec<&tonic::Status> = finished.iter().filter_map(|(_, outcome)| outcome.as_ref().err()).collect();
    assert!(pushed_out.iter().all(|s| s.code() == Code::ResourceExhausted), "{pushed_out:?}");
    assert!(
        pushed_out.iter().any(|s| s.message().contains("this caller held the most of them")),
        "the flood's newest queued call made room: {pushed_out:?}"
    );
    assert_eq!(delta(&base, &server.scrape().await, "modserve_dropped_total", &fair_share), 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_bound_wait_for_a_turn_given_one_connection_at_a_time() {
    let _guard = exclusive().await;
    let body = format!("[batching]\nmax_batch_size = 1\n{ONE_MODEL}");
    let (server, faults) = TestServer::start_faulty(config_with("max_calls_in_progress = 2\n", &body)).await;
    // The calls in progress hold their worker until the waiting calls have been seen; then
    // each later one stalls 400 ms, so the order they are served in is the order of turns.
    faults.on_word("tiny-abuse", "huge", Action::Hold);
    let finished = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let base = server.scrape().await;
    assert_eq!(metric(&base, "modserve_calls_waiting", &[]), Some(0.0), "exported from the start");
    // Two calls in progress, five waiting, all from one connection.
    let flood = spawn_calls_on_one_connection(&server, &finished, "flood", 7, "huge great product").await;
    assert_eq!(server.wait_gauge("modserve_calls_waiting", &[], 5.0).await, Some(5.0));
    let normal = spawn_calls_on_one_connection(&server, &finished, "normal", 1, "great product").await;
    assert_eq!(server.wait_gauge("modserve_calls_waiting", &[], 6.0).await, Some(6.0), "it waits too");
    // A caller whose deadline passes while it waits is told why (a bare client, which waits
    // for the server's answer past its own deadline).
    let (code, message) = raw_classify(server.grpc_addr, &request(vec![review("late", "great product")]), "100m").await;
    assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains("waiting for a turn") && message.contains("server.max_calls_in_progress"), "{message}");
    faults.on_word("tiny-abuse", "huge", Action::Sleep(Duration::from_millis(400)));
    faults.release();
    for task in normal.into_iter().chain(flood) {
        task.await.unwrap();
    }
    let finished = finished.lock().unwrap().clone();
    assert!(finished.iter().all(|(_, outcome)| outcome.is_ok()), "every call that waited is served: {finished:?}");
    // The flood's connection had the next turn, the other connection the one after: it goes
    // before the flood's last three, where arrival order would have put it last.
    let normal = finished.iter().position(|(name, _)| name == "normal-0").unwrap();
    assert!(normal <= 3, "{normal} calls were served before it: {finished:?}");
    let now = server.scrape().await;
    let refused = [("listener", "grpc"), ("reason", "turn_deadline")];
    assert_eq!(delta(&base, &now, "modserve_transport_refusals_total", &refused), 1.0);
    let counted = [("method", "Classify"), ("code", "DEADLINE_EXCEEDED")];
    assert_eq!(delta(&base, &now, "modserve_requests_total", &counted), 1.0);
    server.stop().await;
}

/// A connection with one call at a time goes ahead of a busy one's waiting calls, and while it
/// calls, the busy connections' calls in progress are held to `max_busy_calls_in_progress`; a
/// second after it was let in, they get the whole bound back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_connections_are_held_to_their_bound_while_a_light_caller_calls() {
    let _guard = exclusive().await;
    let body = format!("[batching]\nmax_batch_size = 1\n{ONE_MODEL}");
    let server_keys = "max_calls_in_progress = 4\nmax_busy_calls_in_progress = 2\n";
    let (server, faults) = TestServer::start_faulty(config_with(server_keys, &body)).await;
    // Held until the waiting calls have been seen, then 300 ms a call.
    faults.on_word("tiny-abuse", "huge", Action::Hold);
    let finished = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (light, busy) = ([("connection", "light")], [("connection", "busy")]);
    let base = server.scrape().await;
    assert_eq!(metric(&base, "modserve_calls_in_progress", &busy), Some(0.0), "exported from the start");
    // Alone, one connection has all four places: its first call was its only one (light), the
    // next three are busy; eight wait.
    let flood = spawn_calls_on_one_connection(&server, &finished, "flood", 12, "huge great product").await;
    assert_eq!(server.wait_gauge("modserve_calls_waiting", &[], 8.0).await, Some(8.0));
    let now = server.scrape().await;
    assert_eq!(metric(&now, "modserve_calls_in_progress", &busy), Some(3.0));
    assert_eq!(metric(&now, "modserve_calls_in_progress", &light), Some(1.0));
    // Another connection's only call takes the next free place, ahead of the eight.
    let normal = spawn_calls_on_one_connection(&server, &finished, "normal", 1, "great product").await;
    assert_eq!(server.wait_gauge("modserve_calls_waiting", &[], 9.0).await, Some(9.0), "it waits for a place");
    faults.on_word("tiny-abuse", "huge", Action::Sleep(Duration::from_millis(300)));
    faults.release();
    for task in normal {
        task.await.unwrap();
    }
    // Beside it, the busy connection is held to two calls in progress, its others waiting with
    // places free (the one of its calls that was light may still be in progress)...
    assert_eq!(server.wait_gauge("modserve_calls_in_progress", &busy, 2.0).await, Some(2.0));
    let held = server.scrape().await;
    assert!(metric(&held, "modserve_calls_in_progress", &light).unwrap() <= 1.0);
    assert!(metric(&held, "modserve_calls_waiting", &[]).unwrap() >= 4.0, "its calls wait with places free");
    // ...until the light caller has been quiet for a second: then it has all four again.
    assert_eq!(server.wait_gauge("modserve_calls_in_progress", &busy, 4.0).await, Some(4.0));
    for task in flood {
        task.await.unwrap();
    }
    let finished = finished.lock().unwrap().clone();
    assert!(finished.iter().all(|(_, outcome)| outcome.is_ok()), "every call is served: {finished:?}");
    // Before it: the call whose place it took, the one the model then ran, and at most one more
    // (the flood's turn in the model's queue); without its place first it would wait for eight.
    let normal = finished.iter().position(|(name, _)| name == "normal-0").unwrap();
    assert!(normal <= 3, "{normal} calls were served before it: {finished:?}");
    server.stop().await;
}

/// A stream's messages are calls too: each waits under the same bound, in its connection's turn,
/// or a flood would open streams instead of calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_messages_wait_for_a_turn_like_calls() {
    let _guard = exclusive().await;
    let body = format!("[batching]\nmax_batch_size = 1\n{ONE_MODEL}");
    let (server, faults) = TestServer::start_faulty(config_with("max_calls_in_progress = 2\n", &body)).await;
    // Held until the waiting message has been seen, then 400 ms a call.
    faults.on_word("tiny-abuse", "huge", Action::Hold);
    let finished = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    // Two calls in progress, three waiting, all from one connection.
    let flood = spawn_calls_on_one_connection(&server, &finished, "flood", 5, "huge great product").await;
    assert_eq!(server.wait_gauge("modserve_calls_waiting", &[], 3.0).await, Some(3.0));
    let mut client = server.client().await;
    let (messages, outbound) = tokio::sync::mpsc::channel(1);
    let mut inbound =
        client.classify_stream(tokio_stream::wrappers::ReceiverStream::new(outbound)).await.unwrap().into_inner();
    messages.send(request(vec![review("stream-0", "great product")])).await.unwrap();
    assert_eq!(server.wait_gauge("modserve_calls_waiting", &[], 4.0).await, Some(4.0), "the message waits");
    faults.on_word("tiny-abuse", "huge", Action::Sleep(Duration::from_millis(400)));
    faults.release();
    let stream = {
        let finished = finished.clone();
        tokio::spawn(async move {
            let answer = inbound.message().await;
            drop(messages);
            let outcome = match answer {
                Ok(Some(response)) if response.error.is_none() => Ok(()),
                other => Err(tonic::Status::internal(format!("{other:?}"))),
            };
            finished.lock().unwrap().push(("stream-0".to_string(), outcome));
        })
    };
    stream.await.unwrap();
    for task in flood {
        task.await.unwrap();
    }
    let finished = finished.lock().unwrap().clone();
    assert!(finished.iter().all(|(_, outcome)| outcome.is_ok()), "every call and message is served: {finished:?}");
    // The two calls in progress, the flood's next turn, then the stream's connection.
    let stream = finished.iter().position(|(name, _)| name == "stream-0").unwrap();
    assert!(stream <= 3, "{stream} calls were served before it: {finished:?}");
    server.stop().await;
}

/// `grpc-timeout` on a ClassifyStream bounds the whole stream: answers come until it passes, then
/// the stream ends DEADLINE_EXCEEDED from the server. Before, it was ignored on streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_deadline_ends_the_stream() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(ONE_MODEL)).await;
    let mut client = server.client().await;
    let (messages, outbound) = tokio::sync::mpsc::channel(1);
    let mut call = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outbound));
    call.metadata_mut().insert("grpc-timeout", "800m".parse().unwrap());
    let mut inbound = client.classify_stream(call).await.unwrap().into_inner();
    messages.send(request(vec![review("before", "great product")])).await.unwrap();
    let answer = inbound.message().await.expect("answered before the deadline").expect("an answer");
    assert!(answer.error.is_none(), "{answer:?}");
    // The client keeps the stream open and quiet past its deadline.
    let ended = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await.expect("the stream ended");
    let status = ended.expect_err("ended by its deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("the stream's deadline (grpc-timeout"), "{status:?}");
    drop(messages);
    server.stop().await;
}

/// A stream's message that waits for a turn past its ceiling is answered DEADLINE_EXCEEDED in the
/// stream, like a unary call's refusal, and counted; the stream stays usable. The ceiling is
/// `limits.max_call_timeout` as it was when the stream opened: the test opens the stream under a
/// short one, then reloads a long one so that the call holding the only turn outlasts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_message_that_waits_past_its_ceiling_is_answered_deadline_exceeded() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modserve.toml");
    let write = |timeout: &str| {
        let text = format!(
            "[server]\ngrpc_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\
             onnxruntime_lib = {:?}\nwatch_config = false\nmax_calls_in_progress = 1\n\
             [limits]\nmax_call_timeout = \"{timeout}\"\n[batching]\nmax_batch_size = 1\n\
             [models.tiny-abuse]\npath = {:?}\n[tasks.abuse]\nlive = \"tiny-abuse\"\n",
            ort_lib().display().to_string(),
            fixture("tiny-abuse").display().to_string()
        );
        std::fs::write(&path, text).unwrap();
    };
    write("300ms");
    let config = modserve::config::Config::load(&path, &modserve::config::Overrides::default()).unwrap();
    let (server, faults) = TestServer::start_faulty(config).await;
    faults.on_word("tiny-abuse", "huge", Action::Sleep(Duration::from_millis(1500)));
    let mut client = server.client().await;
    let (messages, outbound) = tokio::sync::mpsc::channel(4);
    let mut inbound =
        client.classify_stream(tokio_stream::wrappers::ReceiverStream::new(outbound)).await.unwrap().into_inner();
    write("30s");
    let mut admin = pb::admin_client::AdminClient::new(server.channel().await);
    let reloaded = admin.reload(pb::ReloadRequest {}).await.unwrap().into_inner();
    assert!(reloaded.applied, "{:?}", reloaded.errors);
    let base = server.scrape().await;
    // One call runs (1.5 s in the model) and holds the only turn; a second one waits for it.
    let finished = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holders = spawn_calls_on_one_connection(&server, &finished, "holder", 2, "huge great product").await;
    assert_eq!(server.wait_gauge("modserve_calls_waiting", &[], 1.0).await, Some(1.0));
    messages.send(request(vec![review("stream-0", "great product")])).await.unwrap();
    let answer = inbound.message().await.unwrap().expect("an answer in the stream");
    let error = answer.error.expect("the message is refused in the stream");
    assert_eq!(error.code, Code::DeadlineExceeded as i32, "{error:?}");
    assert!(
        error.message.contains("waiting for a turn") && error.message.contains("server.max_calls_in_progress"),
        "{error:?}"
    );
    assert!(answer.results.is_empty());
    let now = server.scrape().await;
    let refused = [("listener", "grpc"), ("reason", "turn_deadline")];
    assert_eq!(delta(&base, &now, "modserve_transport_refusals_total", &refused), 1.0);
    let counted = [("method", "ClassifyStream"), ("code", "DEADLINE_EXCEEDED")];
    assert_eq!(delta(&base, &now, "modserve_requests_total", &counted), 1.0);
    for task in holders {
        task.await.unwrap();
    }
    let finished = finished.lock().unwrap().clone();
    assert!(finished.iter().all(|(_, outcome)| outcome.is_ok()), "the holders are served: {finished:?}");
    // The stream goes on: its next message is served once the turn is free.
    messages.send(request(vec![review("stream-1", "great product")])).await.unwrap();
    let answer = inbound.message().await.unwrap().expect("an answer in the stream");
    assert!(answer.error.is_none(), "{:?}", answer.error);
    assert_eq!(answer.results.len(), 1);
    drop(messages);
    server.stop().await;
}

/// An HTTP/2 connection that grants the server no window: answers' headers arrive, their
/// bodies never can. Returns the sender and the connection's driver (it ends when the server
/// closes the connection).
async fn h2_sender_granting_no_window(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    (sender, tokio::spawn(conn))
}

/// Sends `n` valid Classify calls on `sender` and waits for each answer's headers (which need
/// no window); their bodies are left untaken.
async fn answered_but_not_taken(
    sender: &hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    addr: std::net::SocketAddr,
    n: usize,
) -> Vec<hyper::Response<hyper::body::Incoming>> {
    use prost::Message;
    let mut answers = Vec::new();
    for i in 0..n {
        let message = request(vec![review(&format!("untaken-{i}"), "you idiot")]).encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        let call = hyper::Request::post(format!("http://{addr}/modserve.v1.Moderation/Classify"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from(framed)))
            .unwrap();
        let answer = sender.clone().send_request(call).await.expect("the answer's headers");
        assert_eq!(answer.status(), 200);
        answers.push(answer);
    }
    answers
}

/// A client that never takes its answers (HTTP/2 flow control) has its connection closed at
/// `server.send_timeout`, counted; other clients are served meanwhile. Before, the answered
/// calls and their connection stayed open until the client left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_answers_are_never_taken_is_closed_at_the_send_timeout() {
    let _guard = exclusive().await;
    let server = TestServer::start(config_with("send_timeout = \"1s\"\n", ONE_MODEL)).await;
    let base = server.scrape().await;
    let (sender, connection) = h2_sender_granting_no_window(server.grpc_addr).await;
    let answers = answered_but_not_taken(&sender, server.grpc_addr, 3).await;
    let mut client = server.client().await;
    client.classify(request(vec![review("other", "great product")])).await.expect("another client is served");
    // Not a speed assertion: without the timeout the connection stays open for as long as the
    // client keeps it.
    let ended = tokio::time::timeout(Duration::from_secs(20), connection).await;
    assert!(ended.is_ok(), "the server closed the connection");
    assert_eq!(refusals(&server, &base, "answer_not_taken").await, 1.0);
    drop(answers);
    client.classify(request(vec![review("after", "great product")])).await.expect("served after");
    server.stop().await;
}

/// At shutdown, answers a client is not taking get a second, not the whole grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_never_taken_do_not_hold_shutdown_for_the_grace() {
    let _guard = exclusive().await;
    // A long grace and send timeout: only the drain's own rule can end the connection early.
    let server = TestServer::start(long_grace_config("send_timeout = \"60s\"")).await;
    let (sender, _connection) = h2_sender_granting_no_window(server.grpc_addr).await;
    let _answers = answered_but_not_taken(&sender, server.grpc_addr, 3).await;
    stops_before_the_grace(server, "answers the client never takes").await;
}

/// Large calls weigh on the busy bound by their size (`turns::LARGE_CALL_BYTES`): three
/// connections' one 2 MiB call each count as busy once their prefixes are read, though each is
/// its connection's only call; beside a light caller their next calls then wait, where eight
/// small ones would go ahead. Before, the three were light and their next calls started at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_calls_count_as_busy_by_their_size() {
    let _guard = exclusive().await;
    let (server, faults) = TestServer::start_faulty(config(ONE_MODEL)).await;
    // The first calls hold the worker until the second ones are seen waiting.
    faults.on_word("tiny-abuse", "huge", Action::Hold);
    // 64 reviews of a 16 KiB title and text each: 2 MiB. Only the first is slow (the model sees
    // the title first).
    let (slow, half) = (format!("huge {}", "x".repeat(16 * 1024 - 5)), format!("fine {}", "x".repeat(16 * 1024 - 5)));
    let large = move |name: &str| pb::ClassifyRequest {
        reviews: (0..64)
            .map(|j| {
                let text = if j == 0 { &slow } else { &half };
                pb::Review { title: Some(text.clone()), ..review(&format!("{name}-{j}"), text) }
            })
            .collect(),
        ..Default::default()
    };
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.client().await);
    }
    let call = |client: &ModerationClient<tonic::transport::Channel>, name: String| {
        let (mut client, message) = (client.clone(), large(&name));
        tokio::spawn(async move { client.classify(message).await.map(|_| ()) })
    };
    let first: Vec<_> = clients.iter().enumerate().map(|(i, c)| call(c, format!("first-{i}"))).collect();
    let busy = [("connection", "busy")];
    assert_eq!(server.wait_gauge("modserve_calls_in_progress", &busy, 3.0).await, Some(3.0), "weighed: busy");
    let mut light = server.client().await;
    light.classify(request(vec![review("light", "great product")])).await.expect("the light call goes ahead");
    let second: Vec<_> = clients.iter().enumerate().map(|(i, c)| call(c, format!("second-{i}"))).collect();
    assert_eq!(server.wait_gauge("modserve_calls_waiting", &[], 3.0).await, Some(3.0), "held: 24 of 8 in use");
    faults.release();
    for task in first.into_iter().chain(second) {
        task.await.unwrap().expect("every large call is answered");
    }
    server.stop().await;
}
