//! A verdict as the transport hands it over, checked against the serving state: the task exists,
//! the decision is one of the three, the review is valid, its labels belong to the task's models.

use super::{Verdict, source_label};
use crate::control::registry::{ServingState, TaskEntry};
use crate::error::{Error, excerpt};
use crate::policy::Decision;
use crate::request::{self, MAX_ID_BYTES, RawReview};

/// A verdict before validation; `decision` is `None` when the caller's value is not a decision.
#[derive(Debug, Clone)]
pub struct RawVerdict {
    pub task: String,
    pub decision: Option<Decision>,
    pub review: Option<RawReview>,
    pub labels: Vec<String>,
    pub source: String,
    /// The surface named, if any (checked against the task's surfaces as Classify checks it).
    pub surface: Option<String>,
}

/// Checks every verdict of one submission; the first broken rule fails it, naming the field.
pub fn validate(raw: Vec<RawVerdict>, state: &ServingState) -> Result<Vec<Verdict>, Error> {
    let feedback = &state.config.feedback;
    if raw.is_empty() {
        return Err(Error::invalid("verdicts", "at least one verdict is required"));
    }
    if raw.len() > feedback.max_verdicts_per_request {
        return Err(Error::invalid(
            "verdicts",
            format!(
                "{} verdicts exceed the limit of {} per request (feedback.max_verdicts_per_request)",
                raw.len(),
                feedback.max_verdicts_per_request
            ),
        ));
    }
    raw.into_iter().enumerate().map(|(i, v)| one(&format!("verdicts[{i}]."), v, state)).collect()
}

fn one(at: &str, v: RawVerdict, state: &ServingState) -> Result<Verdict, Error> {
    let Some(entry) = state.tasks.iter().find(|t| t.name == v.task) else {
        return Err(Error::invalid(
            format!("{at}task"),
            format!("unknown task {}; configured tasks are {:?}", excerpt(&v.task), state.task_names()),
        ));
    };
    let surface = surface(&format!("{at}surface"), entry, v.surface.as_deref())?;
    let Some(human) = v.decision else {
        return Err(Error::invalid(
            format!("{at}decision"),
            "must be DECISION_ALLOW, DECISION_REVIEW or DECISION_REJECT",
        ));
    };
    let Some(review) = v.review else {
        return Err(Error::invalid(format!("{at}review"), "is required"));
    };
    let review_at = format!("{at}review.");
    request::check_id(&review_at, &review.id)?;
    let review = request::validate_review(&review_at, review, &state.config.limits)?;
    if let Some((j, label)) = v.labels.iter().enumerate().find(|(_, l)| !entry.has_label(l)) {
        return Err(Error::invalid(
            format!("{at}labels[{j}]"),
            format!(
                "{} is not a label of task {}'s models (live: {:?})",
                excerpt(label),
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
    // Each once: a verdict repeating a label keeps no more than the task's labels in the queue.
    let mut labels = v.labels;
    labels.sort_unstable();
    labels.dedup();
    Ok(Verdict {
        review,
        task: entry.name.clone(),
        human,
        labels,
        source: source_label(&v.source, &state.config.feedback.sources),
        surface,
    })
}

/// The surface a verdict names, under Classify's rules: its name when the task lists it, `None`
/// for the default surface (unset, or an unknown one that falls back).
fn surface(field: &str, entry: &TaskEntry, asked: Option<&str>) -> Result<Option<String>, Error> {
    request::check_surface(field, asked)?;
    let (surface, _) = entry.surface(field, asked)?;
    Ok(surface.map(|i| entry.surfaces[i].name.clone()))
}
