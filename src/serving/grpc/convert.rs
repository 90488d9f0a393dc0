//! Proto <-> domain: validates a `ClassifyRequest` into a `ClassifyInput` (pure, no I/O, so it
//! can be fuzzed), a `SubmitVerdictsRequest` into `Verdict`s, and builds the `ClassifyResponse`.

use std::collections::{HashMap, HashSet};

use super::pb;
use crate::config::{Limits, OversizeText};
use crate::control::registry::ServingState;
use crate::error::Error;
use crate::feedback::{Verdict, source_label};
use crate::policy::Decision;
use crate::request::{ClassifyInput, ReviewInput};
use crate::serving::classify::ClassifyOutput;

/// Longest review id accepted, in bytes: ids end up in logs and the disagreement log.
pub const MAX_ID_BYTES: usize = 256;
/// Most structured signals on one review.
pub const MAX_SIGNALS: usize = 64;

/// Checks every rule of the API; the first broken rule fails the request, naming the field
/// and the review's index.
pub fn validate(req: pb::ClassifyRequest, limits: &Limits) -> Result<ClassifyInput, Error> {
    if req.reviews.is_empty() {
        return Err(Error::invalid("reviews", "at least one review is required"));
    }
    if req.reviews.len() > limits.max_reviews_per_request {
        return Err(Error::invalid(
            "reviews",
            format!("{} reviews exceed the limit of {} per request", req.reviews.len(), limits.max_reviews_per_request),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(req.reviews.len());
    for (i, r) in req.reviews.iter().enumerate() {
        check_id(&format!("reviews[{i}]."), &r.id)?;
        if let Some(j) = seen.insert(r.id.as_str(), i) {
            return Err(Error::invalid(
                format!("reviews[{i}].id"),
                format!("duplicate of reviews[{j}].id {}", crate::error::excerpt(&r.id)),
            ));
        }
    }
    let mut reviews = Vec::with_capacity(req.reviews.len());
    for (i, r) in req.reviews.into_iter().enumerate() {
        reviews.push(validate_review(&format!("reviews[{i}]."), r, limits)?);
    }
    let mut tasks: Vec<String> = Vec::with_capacity(req.tasks.len());
    let mut seen_tasks = HashSet::new();
    for (i, t) in req.tasks.into_iter().enumerate() {
        if t.is_empty() {
            return Err(Error::invalid(format!("tasks[{i}]"), "must not be empty"));
        }
        if seen_tasks.insert(t.clone()) {
            tasks.push(t);
        }
    }
    Ok(ClassifyInput { reviews: reviews.into(), tasks, request_id: req.request_id })
}

/// Checks a review id; `at` prefixes its field names (`reviews[3].`, or empty).
fn check_id(at: &str, id: &str) -> Result<(), Error> {
    if id.trim().is_empty() {
        return Err(Error::invalid(format!("{at}id"), "must not be empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Error::invalid(
            format!("{at}id"),
            format!("{} bytes exceed the limit of {MAX_ID_BYTES}", id.len()),
        ));
    }
    Ok(())
}

/// Checks one review (all but its id); `at` prefixes its field names (`reviews[3].`).
fn validate_review(at: &str, r: pb::Review, limits: &Limits) -> Result<ReviewInput, Error> {
    if r.text.trim().is_empty() {
        return Err(Error::invalid(format!("{at}text"), "must not be empty or only whitespace"));
    }
    let (text, text_cut) = fit(format!("{at}text"), r.text, limits)?;
    let (title, title_cut) = match r.title {
        Some(t) if !t.trim().is_empty() => {
            let (title, cut) = fit(format!("{at}title"), t, limits)?;
            (Some(title), cut)
        }
        _ => (None, false),
    };
    if let Some(rating) = r.rating
        && !rating.is_finite()
    {
        return Err(Error::invalid(format!("{at}rating"), "must be a finite number"));
    }
    if r.signals.len() > MAX_SIGNALS {
        return Err(Error::invalid(
            format!("{at}signals"),
            format!("{} signals exceed the limit of {MAX_SIGNALS}", r.signals.len()),
        ));
    }
    if let Some((k, _)) = r.signals.iter().find(|(_, v)| !v.is_finite() || v.abs() > f32::MAX as f64) {
        return Err(Error::invalid(format!("{at}signals[{k:?}]"), "must be a finite number within float32 range"));
    }
    let model_text = match title {
        Some(title) => format!("{title}\n{text}"),
        None => text,
    };
    Ok(ReviewInput {
        id: r.id,
        model_text,
        rating: r.rating,
        signals: r.signals,
        language: r.language.filter(|l| !l.is_empty()),
        text_cut: text_cut || title_cut,
    })
}

/// Applies the text size limit: reject, or cut at the last character boundary within it (and
/// say so).
fn fit(field: String, mut text: String, limits: &Limits) -> Result<(String, bool), Error> {
    if text.len() <= limits.max_text_bytes {
        return Ok((text, false));
    }
    match limits.oversize_text {
        OversizeText::Reject => Err(Error::invalid(
            field,
            format!("{} bytes exceed the limit of {} (limits.max_text_bytes)", text.len(), limits.max_text_bytes),
        )),
        OversizeText::Truncate => {
            let mut cut = limits.max_text_bytes;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            Ok((text, true))
        }
    }
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
        check_id(&review_at, &review.id)?;
        let review = validate_review(&review_at, review, &state.config.limits)?;
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
        });
    }
    Ok(verdicts)
}

/// Checks one review on its own (a line of `modserve eval`'s labelled file): the rules of a
/// Classify review, with plain field names (`text`, `title`).
pub fn validate_review_fields(r: pb::Review, limits: &Limits) -> Result<ReviewInput, Error> {
    check_id("", &r.id)?;
    validate_review("", r, limits)
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
    fn tasks_are_deduplicated_in_order() {
        let mut req = request(vec![review("a", "x")]);
        req.tasks = vec!["fraud".into(), "abuse".into(), "fraud".into()];
        assert_eq!(validate(req, &Limits::default()).unwrap().tasks, ["fraud", "abuse"]);
    }
}
