//! A classification request in the domain: the rules every review and request must meet
//! (`validate`, whatever the transport) and their validated form.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Limits, OversizeText};
use crate::error::Error;

/// When a call must be answered by: the caller's deadline, capped at `limits.max_call_timeout`
/// from the call's arrival, so no call holds resources for longer whatever the client asks.
#[derive(Debug, Clone, Copy)]
pub struct CallDeadline {
    pub at: Instant,
    /// The cap, when it is what set `at` (said in the error, so the caller knows why).
    capped: Option<Duration>,
}

impl CallDeadline {
    pub fn new(arrived: Instant, asked: Option<Instant>, ceiling: Duration) -> CallDeadline {
        match asked {
            Some(at) if at <= arrived + ceiling => CallDeadline { at, capped: None },
            _ => CallDeadline { at: arrived + ceiling, capped: Some(ceiling) },
        }
    }

    /// The error for a call whose deadline passed while it waited for inference.
    pub fn exceeded_waiting(&self) -> Error {
        Error::DeadlineExceeded(match self.capped {
            Some(ceiling) => format!("while waiting for inference (limits.max_call_timeout {ceiling:?})"),
            None => "while waiting for inference".into(),
        })
    }
}

/// A request as a caller sent it, not yet checked (`validate`).
#[derive(Debug, Clone, Default)]
pub struct RawRequest {
    pub reviews: Vec<RawReview>,
    /// Task names as sent; empty means every task.
    pub tasks: Vec<String>,
    pub request_id: String,
    /// Where the reviews will be shown, as sent; `None` is the default surface.
    pub surface: Option<String>,
}

impl RawRequest {
    /// Bytes of review text and titles as sent: what validating the request reads and copies.
    pub fn text_bytes(&self) -> usize {
        self.reviews.iter().map(|r| r.text.len() + r.title.as_ref().map_or(0, String::len)).sum()
    }
}

/// One review as a caller sent it, not yet checked.
#[derive(Debug, Clone, Default)]
pub struct RawReview {
    pub id: String,
    pub text: String,
    pub title: Option<String>,
    pub rating: Option<f32>,
    pub signals: HashMap<String, f64>,
    pub language: Option<String>,
}

/// One review, validated. Shared (behind an `Arc`) by every task's job for the request.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewInput {
    pub id: String,
    /// What the model reads: the text, preceded by the title and a newline when there is one.
    pub model_text: String,
    pub rating: Option<f32>,
    pub signals: HashMap<String, f64>,
    /// The caller's language tag, as sent (for input monitoring only).
    pub language: Option<String>,
    /// The text or title was cut to `limits.max_text_bytes`.
    pub text_cut: bool,
}

/// Bytes of text that `reviews` keep alive: what queues of work holding them are bounded by.
pub fn text_bytes(reviews: &[ReviewInput]) -> usize {
    reviews.iter().map(|r| r.model_text.len() + r.id.len()).sum()
}

impl ReviewInput {
    /// The value of a structured signal for a model's `features` input: the `signals` map
    /// first, then the typed `rating` field for a feature named "rating".
    pub fn signal(&self, name: &str) -> Option<f32> {
        if let Some(v) = self.signals.get(name) {
            return Some(*v as f32);
        }
        (name == "rating").then_some(self.rating).flatten()
    }
}

/// Who sent a call, as far as a model's queue shares its room and its turns
/// (`inference::queue`): the connection the call came on. A client with more connections gets
/// more turns, as many as `server.max_connections_per_peer` lets it open; callers behind a proxy
/// that pools connections share the proxy's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Caller(u64);

impl Caller {
    /// Work the server makes itself (verdict scoring, evaluation, shadow copies): one caller.
    pub const SERVER: Caller = Caller(0);

    pub const fn connection(id: u64) -> Caller {
        Caller(id)
    }

    /// A caller for a newly accepted connection.
    pub fn new_connection() -> Caller {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Caller(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// A validated request: at least one review, unique ids, texts within limits.
#[derive(Debug, Clone)]
pub struct ClassifyInput {
    pub reviews: Arc<[ReviewInput]>,
    /// Requested task names, deduplicated, in request order; empty means every task.
    pub tasks: Vec<String>,
    pub request_id: String,
    /// The surface the caller named (checked against each task's surfaces when it is resolved:
    /// `TaskEntry::surface`); `None` is the default surface.
    pub surface: Option<String>,
}

/// Longest review id accepted, in bytes: ids end up in logs and the disagreement log.
pub const MAX_ID_BYTES: usize = 256;
/// Most structured signals on one review.
pub const MAX_SIGNALS: usize = 64;
/// Longest signal name, language tag and request id accepted, in bytes: each is echoed in logs,
/// traces or answers, and none needs more (a BCP 47 tag is at most 35).
pub const MAX_SIGNAL_NAME_BYTES: usize = 128;
pub const MAX_LANGUAGE_BYTES: usize = 64;
pub const MAX_REQUEST_ID_BYTES: usize = 256;

/// Checks every rule of the API on a request's reviews and task names; the first broken rule
/// fails the request, naming the field and the review's index.
pub fn validate(request: RawRequest, limits: &Limits) -> Result<ClassifyInput, Error> {
    let RawRequest { reviews: raw, tasks, request_id, surface } = request;
    check_surface("surface", surface.as_deref())?;
    if request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(Error::invalid(
            "request_id",
            format!("{} bytes exceed the limit of {MAX_REQUEST_ID_BYTES}", request_id.len()),
        ));
    }
    if raw.is_empty() {
        return Err(Error::invalid("reviews", "at least one review is required"));
    }
    if raw.len() > limits.max_reviews_per_request {
        return Err(Error::invalid(
            "reviews",
            format!("{} reviews exceed the limit of {} per request", raw.len(), limits.max_reviews_per_request),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        check_id(&format!("reviews[{i}]."), &r.id)?;
        if let Some(j) = seen.insert(r.id.as_str(), i) {
            return Err(Error::invalid(
                format!("reviews[{i}].id"),
                format!("duplicate of reviews[{j}].id {}", crate::error::excerpt(&r.id)),
            ));
        }
    }
    let mut reviews = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        reviews.push(validate_review(&format!("reviews[{i}]."), r, limits)?);
    }
    let n_tasks = tasks.len();
    let asked = tasks;
    let mut tasks: Vec<String> = Vec::with_capacity(n_tasks);
    let mut seen_tasks = HashSet::new();
    for (i, t) in asked.into_iter().enumerate() {
        if t.is_empty() {
            return Err(Error::invalid(format!("tasks[{i}]"), "must not be empty"));
        }
        if seen_tasks.insert(t.clone()) {
            tasks.push(t);
        }
    }
    Ok(ClassifyInput { reviews: reviews.into(), tasks, request_id, surface })
}

/// Where a request's (or a verdict's) reviews are shown, for one task: an index into the task's
/// surfaces (`TaskEntry::surfaces`), or `None` for the default surface (no surface named, a task
/// that lists none, or an unknown one that falls back).
pub type Surface = Option<usize>;

/// Longest surface name accepted, in bytes: a configured one is a name of at most 64.
pub const MAX_SURFACE_BYTES: usize = 64;

/// Checks a surface as sent (`field` names it): set means named. Whether the task knows it is
/// for the serving state to say (`TaskEntry::surface`).
pub fn check_surface(field: &str, surface: Option<&str>) -> Result<(), Error> {
    match surface {
        Some("") => Err(Error::invalid(field, "must not be empty; leave it unset for the default surface")),
        Some(s) if s.len() > MAX_SURFACE_BYTES => {
            Err(Error::invalid(field, format!("{} bytes exceed the limit of {MAX_SURFACE_BYTES}", s.len())))
        }
        _ => Ok(()),
    }
}

/// Checks a review id; `at` prefixes its field names (`reviews[3].`, or empty).
pub fn check_id(at: &str, id: &str) -> Result<(), Error> {
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

/// Checks one review (all but its id); `at` prefixes its field names (`reviews[3].`, or empty
/// for a review on its own, as `modserve eval` reads them).
pub fn validate_review(at: &str, r: RawReview, limits: &Limits) -> Result<ReviewInput, Error> {
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
    if let Some(k) = r.signals.keys().find(|k| k.len() > MAX_SIGNAL_NAME_BYTES) {
        return Err(Error::invalid(
            format!("{at}signals[{}]", crate::error::excerpt(k)),
            format!("the name's {} bytes exceed the limit of {MAX_SIGNAL_NAME_BYTES}", k.len()),
        ));
    }
    if let Some((k, _)) = r.signals.iter().find(|(_, v)| !v.is_finite() || v.abs() > f32::MAX as f64) {
        return Err(Error::invalid(format!("{at}signals[{k:?}]"), "must be a finite number within float32 range"));
    }
    if let Some(language) = r.language.as_deref().filter(|l| l.len() > MAX_LANGUAGE_BYTES) {
        return Err(Error::invalid(
            format!("{at}language"),
            format!("{} bytes exceed the limit of {MAX_LANGUAGE_BYTES}", language.len()),
        ));
    }
    let model_text = match title {
        // Sized once: `format!` starts empty and grows as it writes, re-allocating and copying
        // twice for a long title and text (most of a large request's validation time).
        Some(title) => {
            let mut joined = String::with_capacity(title.len() + 1 + text.len());
            joined.push_str(&title);
            joined.push('\n');
            joined.push_str(&text);
            joined
        }
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

/// Checks one review on its own (a line of `modserve eval`'s labelled file): the rules of a
/// Classify review, with plain field names (`text`, `title`).
pub fn validate_one(r: RawReview, limits: &Limits) -> Result<ReviewInput, Error> {
    check_id("", &r.id)?;
    validate_review("", r, limits)
}
