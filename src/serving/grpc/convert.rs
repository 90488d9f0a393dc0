//! Proto <-> domain: validates a `ClassifyRequest` into a `ClassifyInput` (pure, no I/O, so it
//! can be fuzzed), a `SubmitVerdictsRequest` into `Verdict`s, and builds the `ClassifyResponse`.

use super::pb;
use crate::config::Limits;
use crate::error::Error;
use crate::feedback::verdict::RawVerdict;
use crate::policy::Decision;
use crate::request::{self, ClassifyInput, RawRequest, RawReview};
use crate::serving::classify::ClassifyOutput;

/// Checks every rule of the API (`request::validate`); the first broken rule fails the
/// request, naming the field and the review's index.
pub fn validate(req: pb::ClassifyRequest, limits: &Limits) -> Result<ClassifyInput, Error> {
    request::validate(request(req), limits)
}

/// A proto request as the domain's unvalidated request.
pub fn request(req: pb::ClassifyRequest) -> RawRequest {
    RawRequest {
        reviews: req.reviews.into_iter().map(review).collect(),
        tasks: req.tasks,
        request_id: req.request_id,
        surface: req.surface,
    }
}

/// A proto review as the domain's unvalidated review.
fn review(r: pb::Review) -> RawReview {
    RawReview { id: r.id, text: r.text, title: r.title, rating: r.rating, signals: r.signals, language: r.language }
}

/// A `SubmitVerdictsRequest`'s verdicts, for `feedback::verdict::validate`.
pub fn verdicts(req: pb::SubmitVerdictsRequest) -> Vec<RawVerdict> {
    req.verdicts
        .into_iter()
        .map(|v| RawVerdict {
            decision: match pb::Decision::try_from(v.decision) {
                Ok(pb::Decision::Allow) => Some(Decision::Allow),
                Ok(pb::Decision::Review) => Some(Decision::Review),
                Ok(pb::Decision::Reject) => Some(Decision::Reject),
                _ => None,
            },
            task: v.task,
            review: v.review.map(review),
            labels: v.labels,
            source: v.source,
            surface: v.surface,
        })
        .collect()
}

pub fn decision(d: Decision) -> pb::Decision {
    match d {
        Decision::Allow => pb::Decision::Allow,
        Decision::Review => pb::Decision::Review,
        Decision::Reject => pb::Decision::Reject,
    }
}

/// Builds the response: one result per review in request order, one entry per task inside.
pub fn response(input: &ClassifyInput, output: &ClassifyOutput) -> pb::ClassifyResponse {
    let models: Vec<pb::ModelRef> = output
        .tasks
        .iter()
        .map(|t| pb::ModelRef {
            name: t.model.name.clone(),
            version: t.model.version.clone(),
            policy_name: t.policy.name.clone(),
            policy_version: t.policy.version.clone(),
        })
        .collect();
    let results = input
        .reviews
        .iter()
        .enumerate()
        .map(|(i, review)| pb::ReviewResult {
            review_id: review.id.clone(),
            tasks: output
                .tasks
                .iter()
                .zip(&models)
                .map(|(t, model)| pb::TaskResult {
                    task: t.task.clone(),
                    decision: decision(t.decisions[i]) as i32,
                    scores: t
                        .model
                        .labels
                        .iter()
                        .zip(t.scores_of(i))
                        .map(|(label, score)| pb::LabelScore { label: label.clone(), score: *score })
                        .collect(),
                    model: Some(model.clone()),
                })
                .collect(),
        })
        .collect();
    pb::ClassifyResponse { results, request_id: input.request_id.clone(), error: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OversizeText;

    fn review(id: &str, text: &str) -> pb::Review {
        pb::Review { id: id.into(), text: text.into(), ..Default::default() }
    }

    fn request(reviews: Vec<pb::Review>) -> pb::ClassifyRequest {
        pb::ClassifyRequest { reviews, ..Default::default() }
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn names_the_field_and_index() {
        let limits = Limits { max_text_bytes: 10, ..Limits::default() };
        let cases = [
            (request(vec![]), "reviews"),
            (request(vec![review("a", "ok"), review("", "ok")]), "reviews[1].id"),
            (request(vec![review("a", "ok"), review("b", " \n")]), "reviews[1].text"),
            (request(vec![review("a", "ok"), review("a", "ok")]), "reviews[1].id"),
            (request(vec![review("a", "01234567890")]), "reviews[0].text"),
        ];
        for (req, field) in cases {
            assert_eq!(field_of(validate(req, &limits).unwrap_err()), field);
        }
    }

    #[test]
    fn too_many_reviews() {
        let limits = Limits { max_reviews_per_request: 2, ..Limits::default() };
        let req = request((0..3).map(|i| review(&i.to_string(), "x")).collect());
        assert_eq!(field_of(validate(req, &limits).unwrap_err()), "reviews");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let limits = Limits { max_text_bytes: 4, oversize_text: OversizeText::Truncate, ..Limits::default() };
        let input = validate(request(vec![review("a", "aéé")]), &limits).unwrap();
        assert_eq!(input.reviews[0].model_text, "aé");
    }

    #[test]
    fn title_precedes_text() {
        let mut r = review("a", "body");
        r.title = Some("Title".into());
        let input = validate(request(vec![r]), &Limits::default()).unwrap();
        assert_eq!(input.reviews[0].model_text, "Title\nbody");
    }

    #[test]
    fn non_finite_signals_are_rejected() {
        let mut r = review("a", "body");
        r.signals.insert("account_age_days".into(), f64::NAN);
        let err = validate(request(vec![r]), &Limits::default()).unwrap_err();
        assert_eq!(field_of(err), "reviews[0].signals[\"account_age_days\"]");
    }

    #[test]
    fn overlong_signal_names_languages_and_request_ids_are_refused_and_quoted_only_in_part() {
        let long = "k".repeat(1 << 20);
        let mut r = review("a", "body");
        r.signals.insert(long.clone(), f64::NAN);
        let err = validate(request(vec![r]), &Limits::default()).unwrap_err();
        assert!(err.to_string().len() < 400, "{} bytes", err.to_string().len());
        assert!(field_of(err).starts_with("reviews[0].signals[\"kkk"));
        let mut r = review("a", "body");
        r.language = Some(long.clone());
        assert_eq!(field_of(validate(request(vec![r]), &Limits::default()).unwrap_err()), "reviews[0].language");
        let req = pb::ClassifyRequest { request_id: long, ..request(vec![review("a", "body")]) };
        assert_eq!(field_of(validate(req, &Limits::default()).unwrap_err()), "request_id");
    }

    #[test]
    fn a_surface_is_kept_and_an_empty_or_overlong_one_refused() {
        let with =
            |surface: &str| pb::ClassifyRequest { surface: Some(surface.into()), ..request(vec![review("a", "x")]) };
        assert_eq!(validate(with("kids"), &Limits::default()).unwrap().surface.as_deref(), Some("kids"));
        assert_eq!(validate(request(vec![review("a", "x")]), &Limits::default()).unwrap().surface, None);
        assert_eq!(field_of(validate(with(""), &Limits::default()).unwrap_err()), "surface");
        assert_eq!(field_of(validate(with(&"s".repeat(65)), &Limits::default()).unwrap_err()), "surface");
    }

    #[test]
    fn tasks_are_deduplicated_in_order() {
        let mut req = request(vec![review("a", "x")]);
        req.tasks = vec!["fraud".into(), "abuse".into(), "fraud".into()];
        assert_eq!(validate(req, &Limits::default()).unwrap().tasks, ["fraud", "abuse"]);
    }
}
