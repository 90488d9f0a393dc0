//! A real Prometheus (the Debian `prometheus` package) scrapes a running modserve and evaluates
//! `deploy/prometheus/modserve-rules.yml`: the recorded agreement ratio must equal the ratio
//! computed from the two models' own answers for the reviews sent. Both servers run in processes
//! of their own (`ChildServer`), so the totals Prometheus reads are theirs alone.

use crate::common::prometheus::Prometheus;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_agreement_ratio_equals_the_ratio_of_the_answers() {
    let _shared = shared().await;
    let server = ChildServer::start(LIVE_AND_SHADOW).await;
    let plain_v2 = ChildServer::start(
        r#"
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[tasks.abuse]
live = "tiny-abuse-v2"
"#,
    )
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

    let prometheus = Prometheus::start(&[server.metrics_addr]).await;
    let rule =
        r#"modserve:shadow_agreement:ratio{task="abuse", live_model="tiny-abuse", shadow_model="tiny-abuse-v2"}"#;
    let (_, recorded) = prometheus.wait_any(rule).await.expect("the recording rule produced a value within 30 s");
    assert!((recorded - expected).abs() < 1e-9, "recorded {recorded}, answers say {expected}");
    // The raw confusion matrix in Prometheus agrees with what the server counted.
    let sum = prometheus.query(r#"sum(modserve_shadow_comparisons_total{shadow_model="tiny-abuse-v2"})"#).await;
    assert_eq!(sum.map(|(_, v)| v), Some(total as f64));
    drop(prometheus);
    server.stop().await;
    plain_v2.stop().await;
}
