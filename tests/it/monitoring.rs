//! Input and score monitoring: text sizes, cut texts, languages, tokens, unknown tokens, reviews
//! at the model's length limit and score histograms, each counted exactly for a known set of
//! reviews (token counts from the fixture tokenizer's own vocabulary).

use crate::common::*;

/// Limits and languages; the models are `LIVE_AND_SHADOW`.
const CONFIG: &str = r#"
[limits]
max_text_bytes = 1024
oversize_text = "truncate"
[monitoring]
languages = ["en", "de"]
"#;

fn with_language(id: &str, text: &str, language: Option<&str>) -> modserve::serving::grpc::pb::Review {
    modserve::serving::grpc::pb::Review { language: language.map(str::to_string), ..review(id, text) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_quality_and_scores_are_counted_exactly() {
    let _guard = exclusive().await;
    let server = TestServer::start(config(&format!("{CONFIG}{LIVE_AND_SHADOW}"))).await;
    let base = server.scrape().await;
    // "you idiot": 2 known tokens. "qzxv blorf idiot": 2 unknown of 3. 70 x "you": 70 tokens,
    // cut to the model's 64. 1100 bytes of "you ": cut to 1024 bytes (256 words), then 64 tokens.
    let long_words = "you ".repeat(70);
    let too_long = "you ".repeat(275);
    let reviews = vec![
        with_language("m1", "you idiot", Some("en-GB")),
        with_language("m2", "qzxv blorf idiot", Some("DE")),
        with_language("m3", long_words.trim_end(), Some("fr")),
        with_language("m4", &too_long, None),
    ];
    let mut client = server.client().await;
    client.classify(request(reviews)).await.unwrap();
    let now = server.scrape().await;
    let d = |name: &str, labels: &[(&str, &str)]| sum_where(&now, name, labels) - sum_where(&base, name, labels);

    assert_eq!(d("modserve_review_text_bytes_count", &[]), 4.0);
    let bytes = 9 + 16 + long_words.trim_end().len() + 1024;
    assert_eq!(d("modserve_review_text_bytes_sum", &[]), bytes as f64, "the cut text counts at its cut size");
    assert_eq!(d("modserve_reviews_text_cut_total", &[]), 1.0);
    for (language, want) in [("en", 1.0), ("de", 1.0), ("other", 1.0), ("none", 1.0)] {
        assert_eq!(d("modserve_reviews_by_language_total", &[("language", language)]), want, "{language}");
    }
    let live = [("model", "tiny-abuse"), ("role", "live")];
    assert_eq!(d("modserve_tokens_total", &live), (2 + 3 + 64 + 64) as f64);
    assert_eq!(d("modserve_unknown_tokens_total", &live), 2.0);
    assert_eq!(d("modserve_reviews_at_max_tokens_total", &live), 2.0);
    // One score per review and label, live now; the shadow's once it has compared them.
    for label in ["insult", "threat"] {
        let labels = [("task", "abuse"), ("model", "tiny-abuse"), ("role", "live"), ("label", label)];
        assert_eq!(d("modserve_scores_count", &labels), 4.0, "{label}");
    }
    let shadow = [("task", "abuse"), ("model", "tiny-abuse-v2"), ("role", "shadow"), ("label", "insult")];
    let mut seen = 0.0;
    for _ in 0..600 {
        let now = server.scrape().await;
        seen = sum_where(&now, "modserve_scores_count", &shadow) - sum_where(&base, "modserve_scores_count", &shadow);
        if seen >= 4.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 4.0);
    // "you idiot" scores 0.982 on insult (golden.json): it lands in the top bucket only.
    let top = [("model", "tiny-abuse"), ("role", "live"), ("label", "insult"), ("le", "0.95")];
    assert!(d("modserve_scores_bucket", &top) < 4.0, "not every insult score is at most 0.95");
    server.stop().await;
}
