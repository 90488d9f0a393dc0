//! Proto <-> domain: validates a `ClassifyRequest` into a `ClassifyInput` (pure, no I/O, so it
//! can be fuzzed), a `SubmitVerdictsRequest` into `Verdict`s, and builds the `ClassifyResponse`.

use super::pb;
use crate::config::Limits;
use crate::control::registry::{ServingState, TaskEntry};
use crate::error::Error;
use crate::feedback::{Verdict, source_label};
use crate::policy::Decision;
use crate::request::{self, ClassifyInput, MAX_ID_BYTES, RawRequest, RawReview};
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

/// Checks every verdict of a `SubmitVerdictsRequest` against the serving state (its tasks and
/// their models' labels); the first broken rule fails the call, naming the field.
pub fn validate_verdicts(req: pb::SubmitVerdictsRequest, state: &ServingState) -> Result<Vec<Verdict>, Error> {
    let feedback = &state.config.feedback;
    if req.verdicts.is_empty() {
        return Err(Error::invalid("verdicts", "at least one verdict is required"));
    }
    if req.verdicts.len() > feedback.max_verdicts_per_request {
        return Err(Error::invalid(
            "verdicts",
            format!(
                "{} verdicts exceed the limit of {} per request (feedback.max_verdicts_per_request)",
                req.verdicts.len(),
                feedback.max_verdicts_per_request
            ),
        ));
    }
    let mut verdicts = Vec::with_capacity(req.verdicts.len());
    for (i, v) in req.verdicts.into_iter().enumerate() {
        let at = format!("verdicts[{i}].");
        let Some(entry) = state.tasks.iter().find(|t| t.name == v.task) else {
            return Err(Error::invalid(
                format!("{at}task"),
                format!(
                    "unknown task {}; configured tasks are {:?}",
                    crate::error::excerpt(&v.task),
                    state.task_names()
                ),
            ));
        };
        let surface = verdict_surface(&at, entry, v.surface.as_deref())?;
        let human = match pb::Decision::try_from(v.decision) {
            Ok(pb::Decision::Allow) => Decision::Allow,
            Ok(pb::Decision::Review) => Decision::Review,
            Ok(pb::Decision::Reject) => Decision::Reject,
            _ => {
                return Err(Error::invalid(
                    format!("{at}decision"),
                    "must be DECISION_ALLOW, DECISION_REVIEW or DECISION_REJECT",
                ));
            }
        };
        let Some(review) = v.review else {
            return Err(Error::invalid(format!("{at}review"), "is required"));
        };
        let review_at = format!("{at}review.");
        request::check_id(&review_at, &review.id)?;
        let review = request::validate_review(&review_at, self::review(review), &state.config.limits)?;
        if let Some((j, label)) = v.labels.iter().enumerate().find(|(_, l)| !entry.has_label(l)) {
            return Err(Error::invalid(
                format!("{at}labels[{j}]"),
                format!(
                    "{} is not a label of task {}'s models (live: {:?})",
                    crate::error::excerpt(label),
                    entry.name,
                    entry.live.spec().labels
                ),
            ));
        }
        if v.source.len() > MAX_ID_BYTES {
            return Err(Error::invalid(
                format!("{at}source"),
                format!("{} bytes exceed the limit of {MAX_ID_BYTES}", v.source.len()),
            ));
        }
        // Labels are checked above but not counted yet: the verdict keeps only what is.
        verdicts.push(Verdict {
            review,
            task: entry.name.clone(),
            human,
            source: source_label(&v.source, &feedback.sources),
            surface,
        });
    }
    Ok(verdicts)
}

/// The surface a verdict names, under Classify's rules (`verdicts[i].surface`): its name when
/// the task lists it, `None` for the default surface (unset, or an unknown one that falls back).
fn verdict_surface(at: &str, entry: &TaskEntry, asked: Option<&str>) -> Result<Option<String>, Error> {
    let field = format!("{at}surface");
    request::check_surface(&field, asked)?;
    let (surface, _) = entry.surface(&field, asked)?;
    Ok(surface.map(|i| entry.surfaces[i].name.clone()))
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
