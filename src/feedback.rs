//! Moderator verdicts: the ground truth that tells whether a candidate is better, not only
//! different. `Feedback/SubmitVerdicts` hands validated verdicts to `Feedback::submit`, which
//! drops repeats of a (review id, task) seen within `feedback.dedupe_window` and queues the rest;
//! one background task scores them with the task's live model and every shadow (not sampled) and
//! counts each model's decision against the human one (`metrics::VerdictMetrics`).
//!
//! Verdicts never slow Classify: the queue is bounded (a full queue refuses the call), work goes
//! to the live model in small chunks only while its queue is shorter than
//! `shadow.live_pressure_jobs`, and a verdict not scored within `feedback.max_delay` is shed and
//! counted. Nothing is stored but the dedupe window, so any replica can take any verdict.
//!
//! With the decision journal on, the live side of a verdict is counted against the decision the
//! journal's index recorded as served for the same (review id, task), text, model and policy,
//! instead of re-scoring it: what was served is what the moderator judged. Verdicts the index
//! does not know (another replica served them, they are older than `journal.index_max_age`, the
//! model, policy or text changed since) are re-scored as without a journal.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::sync::mpsc;

pub use crate::config::FeedbackConfig;
use crate::control::registry::{Registry, ServingState, TaskEntry};
use crate::error::Error;
use crate::inference::worker::ModelHandle;
use crate::journal::index::{ServedDecision, decider};
use crate::journal::{Journal, text_sha256};
use crate::metrics::{self, JournalLookup, NO_SOURCE, OTHER_SOURCE, VerdictOutcome};
use crate::policy::Decision;
use crate::request::{Caller, ReviewInput};

pub mod verdict;

/// A validated verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub review: ReviewInput,
    pub task: String,
    /// The moderator's decision.
    pub human: Decision,
    /// The labels the moderator named (each one the task's); empty when none: the decision
    /// then holds for every label.
    pub labels: Vec<String>,
    /// A configured source, "other" or "none".
    pub source: String,
    /// The surface the review was classified for, when its task lists it (`None`: the default
    /// surface); looked up again at scoring, by name, in the state of the moment.
    pub surface: Option<String>,
}

/// The answer to a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Submitted {
    pub accepted: usize,
    pub duplicates: usize,
}

/// The cheap, cloneable front door; the scoring task stops when every handle is dropped.
#[derive(Clone)]
pub struct Feedback {
    tx: mpsc::UnboundedSender<Accepted>,
    /// Verdicts accepted and not yet scored: the queue's bound is checked against it (the
    /// channel itself is unbounded so the bound can follow reloads of `queue_capacity`).
    queued: Arc<AtomicUsize>,
    /// Review text bytes of the verdicts in `queued`.
    queued_bytes: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
}

struct Accepted {
    verdicts: Vec<Verdict>,
    bytes: usize,
    at: Instant,
}

/// Normalises a caller's source tag to a bounded label value.
pub fn source_label(source: &str, configured: &[String]) -> String {
    if source.is_empty() {
        NO_SOURCE.to_string()
    } else if configured.iter().any(|s| s == source) {
        source.to_string()
    } else {
        OTHER_SOURCE.to_string()
    }
}

impl Feedback {
    /// Starts the scoring task on the current runtime.
    pub fn start(registry: Registry) -> (Feedback, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (queued, queued_bytes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let task = tokio::spawn(score_loop(registry, rx, queued.clone(), queued_bytes.clone()));
        (Feedback { tx, queued, queued_bytes, seen: Arc::new(Mutex::new(Seen::default())) }, task)
    }

    /// Whether a SubmitVerdicts message of `bytes` may be read at all: refused (as the queue
    /// refuses a call) when the queue is full by count, or when the message is larger than the
    /// text bytes the queue has room for. Its review texts are at most its bytes, so a call
    /// refused here might have fit by the size of its ids and tags; a flood of large calls at a
    /// full queue then costs the server a 5-byte prefix each instead of reading and decoding
    /// megabytes only to refuse them.
    pub fn admit(&self, bytes: usize, config: &crate::config::FeedbackConfig) -> Result<(), Error> {
        let queued = self.queued.load(Ordering::SeqCst);
        let room = config.queue_max_bytes.saturating_sub(self.queued_bytes.load(Ordering::SeqCst));
        if queued >= config.queue_capacity {
            Err(Error::FeedbackQueueFull { limit: count_limit(config) })
        } else if bytes > room {
            Err(Error::FeedbackQueueFull {
                limit: format!(
                    "a message of {bytes} bytes, more than the {room} bytes of review text the queue has room for \
                     (feedback.queue_max_bytes {})",
                    config.queue_max_bytes
                ),
            })
        } else {
            Ok(())
        }
    }

    /// Drops repeats and queues the rest for scoring. Refuses the whole call (nothing counted,
    /// nothing remembered) when the queue cannot take it. The dedupe window is locked from the
    /// check to the insert, so two calls carrying the same verdict at once count it once.
    pub fn submit(&self, state: &ServingState, verdicts: Vec<Verdict>) -> Result<Submitted, Error> {
        let config = &state.config.feedback;
        let now = Instant::now();
        let received = verdicts.len();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut in_call = std::collections::HashSet::new();
        let fresh: Vec<Verdict> = verdicts
            .into_iter()
            .filter(|v| {
                let key = key(&v.review.id, &v.task);
                let repeat = !in_call.insert(key) || seen.contains(key, now, config.dedupe_window);
                if repeat {
                    metrics::verdicts_received(&v.task, &v.source, VerdictOutcome::Duplicate, 1);
                }
                !repeat
            })
            .collect();
        let accepted = fresh.len();
        let submitted = Submitted { accepted, duplicates: received - accepted };
        if accepted == 0 {
            return Ok(submitted);
        }
        let bytes: usize = fresh.iter().map(|v| v.review.model_text.len()).sum();
        let before = self.queued.fetch_add(accepted, Ordering::SeqCst);
        let bytes_before = self.queued_bytes.fetch_add(bytes, Ordering::SeqCst);
        let full = if before + accepted > config.queue_capacity {
            Some(count_limit(config))
        } else if bytes_before + bytes > config.queue_max_bytes {
            Some(format!(
                "{} bytes of review text waiting to be scored, feedback.queue_max_bytes",
                config.queue_max_bytes
            ))
        } else {
            None
        };
        if let Some(limit) = full {
            self.queued.fetch_sub(accepted, Ordering::SeqCst);
            self.queued_bytes.fetch_sub(bytes, Ordering::SeqCst);
            for v in &fresh {
                metrics::verdicts_received(&v.task, &v.source, VerdictOutcome::ShedQueueFull, 1);
            }
            return Err(Error::FeedbackQueueFull { limit });
        }
        for v in &fresh {
            seen.insert(key(&v.review.id, &v.task), now, config.dedupe_window, config.dedupe_capacity);
        }
        drop(seen);
        metrics::feedback_queue(before + accepted);
        if self.tx.send(Accepted { verdicts: fresh, bytes, at: now }).is_err() {
            self.queued.fetch_sub(accepted, Ordering::SeqCst);
            self.queued_bytes.fetch_sub(bytes, Ordering::SeqCst);
            return Err(Error::Unavailable("the server is shutting down; retry on another replica"));
        }
        Ok(submitted)
    }
}

/// A 64-bit key for (review id, task): collisions among a window's keys are negligible, and it
/// keeps the window's memory small.
/// The queue's count bound, as a refusal names it.
fn count_limit(config: &crate::config::FeedbackConfig) -> String {
    format!("{} verdicts waiting to be scored, feedback.queue_capacity", config.queue_capacity)
}

fn key(review_id: &str, task: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (review_id, task).hash(&mut h);
    h.finish()
}

/// The dedupe window: keys with the time they were first accepted, oldest first.
#[derive(Default)]
struct Seen {
    at: HashMap<u64, Instant>,
    order: VecDeque<(u64, Instant)>,
}

impl Seen {
    fn contains(&self, key: u64, now: Instant, window: Duration) -> bool {
        self.at.get(&key).is_some_and(|t| now.duration_since(*t) < window)
    }

    fn insert(&mut self, key: u64, now: Instant, window: Duration, capacity: usize) {
        if window.is_zero() {
            return;
        }
        while let Some(&(k, t)) = self.order.front() {
            if now.duration_since(t) < window && self.order.len() < capacity {
                break;
            }
            self.order.pop_front();
            if self.at.get(&k) == Some(&t) {
                self.at.remove(&k);
            }
        }
        self.at.insert(key, now);
        self.order.push_back((key, now));
    }
}

async fn score_loop(
    registry: Registry,
    mut rx: mpsc::UnboundedReceiver<Accepted>,
    queued: Arc<AtomicUsize>,
    queued_bytes: Arc<AtomicUsize>,
) {
    while let Some(accepted) = rx.recv().await {
        let (n, bytes) = (accepted.verdicts.len(), accepted.bytes);
        match registry.load() {
            Some(state) => score(&state, accepted).await,
            // Only while shutting down; nothing can score them now.
            None => {
                for v in &accepted.verdicts {
                    metrics::verdicts_received(&v.task, &v.source, VerdictOutcome::Error, 1);
                }
            }
        }
        queued_bytes.fetch_sub(bytes, Ordering::SeqCst);
        let left = queued.fetch_sub(n, Ordering::SeqCst) - n;
        metrics::feedback_queue(left);
    }
}

/// Scores one accepted call's verdicts, task by task, in chunks.
async fn score(state: &ServingState, accepted: Accepted) {
    let config = &state.config.feedback;
    let deadline = accepted.at + config.max_delay;
    let mut by_task: Vec<(&TaskEntry, Vec<Verdict>)> = Vec::new();
    for v in accepted.verdicts {
        // The task was validated against the state of the call; a reload may have removed it.
        let Some(entry) = state.tasks.iter().find(|t| t.name == v.task) else {
            metrics::verdicts_received(&v.task, &v.source, VerdictOutcome::Error, 1);
            continue;
        };
        match by_task.iter_mut().find(|(e, _)| std::ptr::eq(*e, entry)) {
            Some((_, list)) => list.push(v),
            None => by_task.push((entry, vec![v])),
        }
    }
    // Verdicts wait until the live model's queue is empty: they are never ahead of a caller.
    let pressure = 1;
    for (entry, verdicts) in by_task {
        for chunk in verdicts.chunks(config.batch_size) {
            score_chunk(entry, state.journal.as_ref(), chunk, deadline, pressure).await;
        }
    }
}

async fn score_chunk(
    entry: &TaskEntry,
    journal: Option<&Journal>,
    chunk: &[Verdict],
    deadline: Instant,
    pressure: usize,
) {
    let reviews: Arc<[ReviewInput]> = chunk.iter().map(|v| v.review.clone()).collect();
    let received = |outcome: VerdictOutcome| {
        for v in chunk {
            metrics::verdicts_received(&v.task, &v.source, outcome, 1);
        }
    };
    let served = served_decisions(entry, journal, chunk);
    let live_scores = match live_scores(entry, &reviews, &served, deadline, pressure).await {
        Ok(scores) => scores,
        Err(Error::DeadlineExceeded(_)) => return received(VerdictOutcome::ShedDeadline),
        Err(e) => {
            tracing::warn!(task = %entry.name, model = %entry.live.spec().name, error = %e, verdicts = chunk.len(),
                "live model could not score verdicts");
            entry.verdicts.errors.increment(chunk.len() as u64);
            return received(VerdictOutcome::Error);
        }
    };
    let n_live = entry.live.spec().labels.len();
    // The live decisions: as served where the journal knew them, else from the live scores
    // under the verdict's surface's policy.
    let live_decisions: Vec<Decision> = chunk
        .iter()
        .zip(live_scores.chunks_exact(n_live))
        .zip(&served)
        .map(|((v, scores), served)| {
            served.as_ref().map_or_else(
                || entry.policy_on(entry.surface_named(v.surface.as_deref())).decide(scores),
                |s| s.decision,
            )
        })
        .collect();
    let live_labels = &entry.live.spec().labels;
    for ((v, &decision), scores) in chunk.iter().zip(&live_decisions).zip(live_scores.chunks_exact(n_live)) {
        let verdicts = entry.verdicts_on(entry.surface_named(v.surface.as_deref()));
        verdicts.count(&v.source, decision, v.human);
        verdicts.scored(scores, v.human, &v.labels, live_labels);
    }
    // Shadows on their own workers, all at once; policy-only shadows reuse the live scores.
    let shadows = entry.shadows.iter().map(|pair| {
        let reviews = reviews.clone();
        let (live_scores, live_decisions) = (&live_scores, &live_decisions);
        async move {
            let scores = if pair.policy_only {
                Ok(live_scores.clone())
            } else {
                run(&pair.shadow, &reviews, deadline, None).await
            };
            match scores {
                Ok(scores) => {
                    let n = pair.shadow.spec().labels.len();
                    for ((v, s), &live) in chunk.iter().zip(scores.chunks_exact(n)).zip(live_decisions) {
                        // A shadow tried on some surfaces only is judged on those only.
                        let Some(counts) = pair.verdicts_on(entry.surface_named(v.surface.as_deref())) else {
                            continue;
                        };
                        let decision = pair.decision_policy.decide(s);
                        counts.count(&v.source, decision, v.human);
                        // Weighted estimates use only verdicts the labelling queue would pick.
                        pair.count_labelled(&v.review.id, live, decision, v.human);
                    }
                }
                Err(e) => {
                    tracing::warn!(task = %entry.name, shadow = %pair.display_name(), error = %e,
                        verdicts = chunk.len(), "shadow could not score verdicts");
                    pair.verdicts.errors.increment(chunk.len() as u64);
                }
            }
        }
    });
    join_all(shadows).await;
    received(VerdictOutcome::Counted);
}

/// For each verdict, the live decision the journal recorded as served, when there is one for
/// the same text by the model and policy live now (on the verdict's surface); counted by what
/// the index knew.
fn served_decisions(entry: &TaskEntry, journal: Option<&Journal>, chunk: &[Verdict]) -> Vec<Option<ServedDecision>> {
    let Some(journal) = journal else { return vec![None; chunk.len()] };
    let mut counts = [0usize; 3];
    let served = chunk
        .iter()
        .map(|v| {
            let found = journal.served_decision(&v.review.id, &v.task);
            // The policy live now on the verdict's surface: what a re-score would decide with.
            let live = decider(entry.live.spec(), entry.policy_on(entry.surface_named(v.surface.as_deref())));
            let (outcome, served) = match found {
                None => (JournalLookup::NotFound, None),
                Some(s) if s.decider == live && s.text_sha256 == text_sha256(&v.review.model_text) => {
                    (JournalLookup::Served, Some(s))
                }
                Some(_) => (JournalLookup::Changed, None),
            };
            counts[outcome as usize] += 1;
            served
        })
        .collect();
    for outcome in [JournalLookup::Served, JournalLookup::NotFound, JournalLookup::Changed] {
        if counts[outcome as usize] > 0 {
            metrics::journal_lookups(&entry.name, outcome, counts[outcome as usize]);
        }
    }
    served
}

/// The live scores of every review in the chunk: as served where the journal knew them, and
/// from the live model for the rest (no inference at all when the journal knew every one).
async fn live_scores(
    entry: &TaskEntry,
    reviews: &Arc<[ReviewInput]>,
    served: &[Option<ServedDecision>],
    deadline: Instant,
    pressure: usize,
) -> Result<Vec<f32>, Error> {
    if served.iter().all(Option::is_none) {
        return run(&entry.live, reviews, deadline, Some(pressure)).await;
    }
    let missing: Arc<[ReviewInput]> =
        reviews.iter().zip(served).filter(|(_, s)| s.is_none()).map(|(r, _)| r.clone()).collect();
    let rescored =
        if missing.is_empty() { Vec::new() } else { run(&entry.live, &missing, deadline, Some(pressure)).await? };
    let n = entry.live.spec().labels.len();
    let mut rescored = rescored.chunks_exact(n);
    let mut scores = Vec::with_capacity(reviews.len() * n);
    for s in served {
        match s {
            Some(s) => scores.extend_from_slice(&s.scores),
            None => scores.extend_from_slice(rescored.next().unwrap_or_default()),
        }
    }
    Ok(scores)
}

/// Scores `reviews` on `model` before `deadline`. With `pressure`, waits while the model has
/// that many jobs queued (live traffic first); a full queue is waited out the same way.
async fn run(
    model: &ModelHandle,
    reviews: &Arc<[ReviewInput]>,
    deadline: Instant,
    pressure: Option<usize>,
) -> Result<Vec<f32>, Error> {
    let late = || Error::DeadlineExceeded("before scoring verdicts".into());
    let scoring = loop {
        if let Some(jobs) = pressure
            && !model.wait_below(jobs, deadline).await
        {
            return Err(late());
        }
        match model.submit(reviews.clone(), Some(deadline), None, Caller::SERVER) {
            Ok(scoring) => break scoring,
            // Until a worker takes a job off the full queue.
            Err(Error::QueueFull { .. }) => {
                if !model.wait_below(model.queue_len(), deadline).await {
                    return Err(late());
                }
            }
            Err(e) => return Err(e),
        }
    };
    Ok(scoring.wait().await?.scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_key_is_seen_within_the_window_only() {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        seen.insert(key("r1", "abuse"), t0, HOUR, 10);
        assert!(seen.contains(key("r1", "abuse"), t0 + Duration::from_secs(10), HOUR));
        assert!(!seen.contains(key("r1", "fraud"), t0, HOUR), "the task is part of the key");
        assert!(!seen.contains(key("r1", "abuse"), t0 + HOUR, HOUR), "expired");
    }

    #[test]
    fn the_window_is_bounded_oldest_first() {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        for i in 0..5 {
            seen.insert(key(&format!("r{i}"), "abuse"), t0, HOUR, 3);
        }
        assert_eq!(seen.at.len(), 3);
        assert!(!seen.contains(key("r0", "abuse"), t0, HOUR));
        assert!(seen.contains(key("r4", "abuse"), t0, HOUR));
    }

    #[test]
    fn expired_keys_are_forgotten_on_insert() {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        seen.insert(key("old", "abuse"), t0, HOUR, 100);
        seen.insert(key("new", "abuse"), t0 + HOUR * 2, HOUR, 100);
        assert_eq!(seen.at.len(), 1);
    }

    #[test]
    fn a_zero_window_remembers_nothing() {
        let mut seen = Seen::default();
        seen.insert(key("r1", "abuse"), Instant::now(), Duration::ZERO, 100);
        assert!(seen.at.is_empty());
    }

    #[test]
    fn sources_are_bounded() {
        let configured = vec!["trust-safety".to_string()];
        assert_eq!(source_label("trust-safety", &configured), "trust-safety");
        assert_eq!(source_label("someone-else", &configured), OTHER_SOURCE);
        assert_eq!(source_label("", &configured), NO_SOURCE);
    }
}
