//! A real Prometheus scrapes a modserve whose task lists surfaces and evaluates
//! `deploy/prometheus/modserve-rules.yml`: the per-surface agreement rules equal the ratios
//! computed from the answers, and `modserve report --surface` reads that surface's comparisons.
//! Both servers run in processes of their own (`ChildServer`), so the totals Prometheus reads
//! are theirs alone.

use crate::common::prometheus::Prometheus;
use crate::common::*;

/// With surfaces, the existing all-traffic rule still sees every comparison, and the per-surface
/// rules split it by surface: each recorded agreement equals the one computed from the answers
/// of live (deciding with the surface's policy) and of the candidate alone, the default surface
/// (no `surface` label) reading as surface="". Prometheus scrapes the pre-registered zeros
/// before any traffic, so every series' rate over the window has the same extrapolation and
/// the ratio of rates is the exact ratio of counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_surface_agreement_rules_split_the_comparisons_by_surface() {
    let _shared = shared().await;
    let server = ChildServer::start(
        r#"
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[policies.strict-2]
version = "2"
[policies.strict-2.thresholds.insult]
review = 0.3
reject = 0.6
[policies.forum-lenient]
version = "1"
[policies.forum-lenient.thresholds.insult]
review = 0.8
reject = 0.95
[tasks.abuse]
live = "tiny-abuse"
shadows = [{ model = "tiny-abuse-v2", sample_rate = 1.0 }]
[tasks.abuse.surfaces]
kids = "strict-2"
forum = "forum-lenient"
"#,
    )
    .await;
    let plain_v2 = ChildServer::start(
        "[models.tiny-abuse-v2]\npath = \"tests/fixtures/tiny-abuse-v2\"\n[tasks.abuse]\nlive = \"tiny-abuse-v2\"\n",
    )
    .await;
    let prometheus = Prometheus::start(&[server.metrics_addr]).await;
    let zeros = r#"sum(modserve_shadow_comparisons_total{surface="forum"})"#;
    assert_eq!(prometheus.wait_for(zeros, 0.0).await.map(|(_, v)| v), Some(0.0), "the zeros were scraped first");

    let texts =
        ["you idiot", "this is dumb", "you are stupid", "great product", "what a moron", "i will kill you", "nice"];
    let (mut live, mut candidate) = (server.client().await, plain_v2.client().await);
    let mut by_surface: Vec<(&str, usize, usize)> = Vec::new();
    // Live decision x candidate decision on kids, for `modserve report --surface kids`.
    let mut kids = [[0u64; 3]; 3];
    for surface in ["", "kids", "forum"] {
        let (mut agree, mut total) = (0, 0);
        for i in 0..42 {
            let req = request(vec![review(&format!("{surface}-{i}"), texts[i % texts.len()])]);
            let on_surface = pb_surface(req.clone(), surface);
            let l = live.classify(on_surface).await.unwrap().into_inner();
            let c = candidate.classify(req).await.unwrap().into_inner();
            let (ld, cd) = (l.results[0].tasks[0].decision, c.results[0].tasks[0].decision);
            agree += usize::from(ld == cd);
            if surface == "kids" {
                kids[decision_index(decision_name(ld))][decision_index(decision_name(cd))] += 1;
            }
            total += 1;
        }
        by_surface.push((surface, agree, total));
    }
    let agreements: std::collections::BTreeSet<usize> = by_surface.iter().map(|(_, a, _)| *a).collect();
    assert!(agreements.len() > 1, "the surfaces' policies must agree differently: {by_surface:?}");
    let all: usize = by_surface.iter().map(|(_, _, t)| t).sum();
    let labels = [("shadow_model", "tiny-abuse-v2"), ("outcome", "compared")];
    assert_eq!(server.wait_for("", "modserve_shadow_reviews_total", &labels, all as f64).await, all as f64);
    let scraped = r#"sum(modserve_shadow_comparisons_total{shadow_model="tiny-abuse-v2"})"#;
    assert_eq!(prometheus.wait_for(scraped, all as f64).await.map(|(_, v)| v), Some(all as f64));

    // Compared to 6 decimals: rule evaluations after the last scrape give exactly the ratio.
    let micro = |v: f64| (v * 1e6).round();
    for (surface, agree, total) in &by_surface {
        let expected = *agree as f64 / *total as f64;
        let rule = format!(
            r#"round(1e6 * modserve:surface_shadow_agreement:ratio_rate5m{{task="abuse", surface="{surface}", shadow_model="tiny-abuse-v2"}})"#
        );
        let recorded = prometheus.wait_for(&rule, micro(expected)).await.map(|(_, v)| v);
        assert_eq!(recorded, Some(micro(expected)), "surface {surface:?}: agreement {agree}/{total}");
    }
    let agree: usize = by_surface.iter().map(|(_, a, _)| a).sum();
    let whole = r#"round(1e6 * modserve:shadow_agreement:ratio{task="abuse", shadow_model="tiny-abuse-v2"})"#;
    let expected = micro(agree as f64 / all as f64);
    assert_eq!(prometheus.wait_for(whole, expected).await.map(|(_, v)| v), Some(expected), "the all-traffic rule");
    // The launch report kept to one surface reads that surface's comparisons only.
    let mut args = modserve::offline::report::FetchArgs::new(&prometheus.url(), "abuse", "tiny-abuse-v2");
    args.surface = Some("kids".into());
    let input = tokio::task::spawn_blocking(move || modserve::offline::report::fetch(&args)).await.unwrap().unwrap();
    assert_eq!(input.comparisons, kids);
    assert_eq!(input.live.policy, "strict-2", "live decides with the kids policy there");
    assert!(input.notes.iter().any(|n| n.starts_with("surface kids only")), "{:?}", input.notes);
    // Its forecast is kids' traffic per day: the outcomes count every surface, so the kids
    // matrix scales by offered / compared over all surfaces, not by the kids matrix total, which
    // would forecast all surfaces' traffic onto kids.
    let modserve::offline::report::Source::Prometheus { window, .. } = input.source.clone() else { unreachable!() };
    assert_eq!(input.outcome("compared"), all as u64);
    let offered: u64 = input.outcomes.values().sum();
    let per_review = offered as f64 / all as f64 * 86_400.0 / window.as_secs_f64();
    let criteria = modserve::offline::report::LaunchCriteria { min_verdicts: 0, ..Default::default() };
    let queue = modserve::offline::report::Report::build(input, &criteria).forecast.review_queue.unwrap();
    let kids_review = |live: bool| (0..3).map(|i| if live { kids[1][i] } else { kids[i][1] }).sum::<u64>() as f64;
    assert!((queue.live - kids_review(true) * per_review).abs() < 1e-6, "{queue:?}");
    assert!((queue.candidate - kids_review(false) * per_review).abs() < 1e-6, "{queue:?}");
    drop(prometheus);
    server.stop().await;
    plain_v2.stop().await;
}

/// `req` on `surface` ("" = none).
fn pb_surface(
    req: modserve::serving::grpc::pb::ClassifyRequest,
    surface: &str,
) -> modserve::serving::grpc::pb::ClassifyRequest {
    modserve::serving::grpc::pb::ClassifyRequest { surface: (!surface.is_empty()).then(|| surface.to_string()), ..req }
}
