//! A real Prometheus (the Debian `prometheus` package) scrapes a running modserve and evaluates
//! `deploy/prometheus/modserve-rules.yml`: the recorded agreement ratio must equal the ratio
//! computed from the two models' own answers for the reviews sent.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_prometheus(target: std::net::SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let rules = repo().join("deploy/prometheus/modserve-rules.yml");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules:?}\nscrape_configs:\n  - job_name: modserve\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus on PATH (Debian package `prometheus`; scripts/setup --test installs it)");
    let prometheus = Prometheus { child, addr, _dir: dir };
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() && http_get(addr, "/-/ready").await.0 == 200 {
            return prometheus;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("prometheus did not become ready within 30 s");
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant query's first sample, if any.
async fn query(addr: std::net::SocketAddr, promql: &str) -> Option<f64> {
    let (status, body) = http_get(addr, &format!("/api/v1/query?query={}", url_encode(promql))).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"].get(0)?["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_agreement_ratio_equals_the_ratio_of_the_answers() {
    let server = TestServer::start(config(
        r#"
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[tasks.abuse]
live = "tiny-abuse"
shadows = [{ model = "tiny-abuse-v2", sample_rate = 1.0 }]
"#,
    ))
    .await;
    let plain_v2 = TestServer::start(config(
        r#"
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[tasks.abuse]
live = "tiny-abuse-v2"
"#,
    ))
    .await;
    // A known mix, answered by live (through the shadowed server) and by the candidate alone.
    let texts =
        ["you idiot", "this is dumb", "you are stupid", "great product", "what a moron", "i will kill you", "nice"];
    let (mut live, mut candidate) = (server.client().await, plain_v2.client().await);
    let mut agree = 0usize;
    let mut total = 0usize;
    for i in 0..70 {
        let req = request(vec![review(&format!("p{i}"), texts[i % texts.len()])]);
        let l = live.classify(req.clone()).await.unwrap().into_inner();
        let c = candidate.classify(req).await.unwrap().into_inner();
        agree += usize::from(l.results[0].tasks[0].decision == c.results[0].tasks[0].decision);
        total += 1;
    }
    let expected = agree as f64 / total as f64;
    assert!(expected > 0.0 && expected < 1.0, "the mix must contain both agreement and disagreement: {expected}");
    // Wait for the shadow to finish comparing, then let Prometheus scrape.
    // The server was quiet before this test's traffic (its own process), so the base is empty.
    let labels = [("shadow_model", "tiny-abuse-v2"), ("outcome", "compared")];
    let compared = server.wait_for("", "modserve_shadow_reviews_total", &labels, total as f64).await;
    assert_eq!(compared, total as f64);

    let prometheus = start_prometheus(server.metrics_addr).await;
    let rule =
        r#"modserve:shadow_agreement:ratio{task="abuse", live_model="tiny-abuse", shadow_model="tiny-abuse-v2"}"#;
    let mut recorded = None;
    for _ in 0..300 {
        recorded = query(prometheus.addr, rule).await;
        if recorded.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recorded = recorded.expect("the recording rule produced a value within 30 s");
    assert!((recorded - expected).abs() < 1e-9, "recorded {recorded}, answers say {expected}");
    // The raw confusion matrix in Prometheus agrees with what the server counted.
    let sum = query(prometheus.addr, r#"sum(modserve_shadow_comparisons_total{shadow_model="tiny-abuse-v2"})"#).await;
    assert_eq!(sum, Some(total as f64));
    drop(prometheus);
    server.stop().await;
    plain_v2.stop().await;
}
