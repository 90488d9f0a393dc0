//! The classification facade the transports call: resolve tasks, submit one job per task to
//! its live model, await the scores and apply each model's decision policy.

use std::sync::Arc;
use std::time::Instant;

use opentelemetry::KeyValue;

use crate::control::registry::{Registry, ServingState};
use crate::error::Error;
use crate::inference::model::ModelSpec;
use crate::inference::worker::{BatchTiming, TokenSlot};
use crate::journal::{Decider, Journal, ServedTask};
use crate::otel::{self, CallSpan, ShadowLink};
use crate::policy::{Decision, Policy};
use crate::request::{self, CallDeadline, Caller, ClassifyInput, RawRequest, Surface};

/// One task's answer for every review of a request.
pub struct TaskOutput {
    pub task: String,
    /// The named surface decided for (`None`: the default surface).
    pub surface: Option<String>,
    pub model: Arc<ModelSpec>,
    /// The policy that decided.
    pub policy: Arc<Policy>,
    /// `reviews * labels` probabilities, row-major.
    pub scores: Vec<f32>,
    /// One per review.
    pub decisions: Vec<Decision>,
}

impl TaskOutput {
    pub fn scores_of(&self, review: usize) -> &[f32] {
        let n = self.model.labels.len();
        &self.scores[review * n..(review + 1) * n]
    }
}

/// The answer to a request: per task, in the order the tasks were requested.
pub struct ClassifyOutput {
    pub tasks: Vec<TaskOutput>,
}

#[derive(Clone)]
pub struct Classifier {
    registry: Registry,
}

impl Classifier {
    pub fn new(registry: Registry) -> Classifier {
        Classifier { registry }
    }

    /// The serving state for one request: load it once and use it throughout.
    pub fn state(&self) -> Result<Arc<ServingState>, Error> {
        self.registry.load().ok_or(Error::Unavailable("models are still loading"))
    }

    /// One call, whole, as a transport hands it over: one serving state for all of it (a reload
    /// mid-call changes nothing for it), the deadline (the caller's, `asked`, capped at
    /// `limits.max_call_timeout` from `arrived`), the request's rules, then `classify` within
    /// the deadline, its jobs queued as `caller`'s. Returns the validated request with its
    /// answer. Traced under `parent` when tracing is on (`otel`).
    pub async fn call(
        &self,
        request: RawRequest,
        arrived: Instant,
        asked: Option<Instant>,
        caller: Caller,
        parent: &otel::Parent,
    ) -> Result<(ClassifyInput, ClassifyOutput), Error> {
        let span = CallSpan::start(parent, "modserve.Classify", arrived, vec![]);
        let result = self.call_traced(request, arrived, asked, caller, span.as_ref()).await;
        if let Some(span) = span {
            span.end(result.as_ref().err().map(|e| e.to_string()));
        }
        result
    }

    async fn call_traced(
        &self,
        request: RawRequest,
        arrived: Instant,
        asked: Option<Instant>,
        caller: Caller,
        span: Option<&CallSpan>,
    ) -> Result<(ClassifyInput, ClassifyOutput), Error> {
        let state = self.state()?;
        let limits = &state.config.limits;
        let deadline = CallDeadline::new(arrived, asked, limits.max_call_timeout);
        let validating = Instant::now();
        let input = crate::serving::blocking::if_large(request.text_bytes(), || request::validate(request, limits));
        if let Some(span) = span {
            span.child("validate", validating, Instant::now(), vec![]);
            if let Ok(input) = &input {
                span.set(vec![
                    KeyValue::new("modserve.request_id", input.request_id.clone()),
                    KeyValue::new("modserve.reviews", input.reviews.len() as i64),
                ]);
            }
        }
        let input = input?;
        if deadline.at <= Instant::now() {
            return Err(Error::DeadlineExceeded("before the request was queued".into()));
        }
        let classified = self.classify(&state, &input, Some(deadline.at), caller, span);
        let output = tokio::time::timeout_at(deadline.at.into(), classified)
            .await
            .map_err(|_| deadline.exceeded_waiting())??;
        Ok((input, output))
    }

    /// Classifies a validated request. `deadline` is the caller's; work still queued past it
    /// is dropped before inference. Its jobs take turns with other callers' (`Caller`). Each
    /// task's steps are added to `span` when it is traced.
    pub async fn classify(
        &self,
        state: &ServingState,
        input: &ClassifyInput,
        deadline: Option<Instant>,
        caller: Caller,
        span: Option<&CallSpan>,
    ) -> Result<ClassifyOutput, Error> {
        let tasks = resolve_tasks(state, &input.tasks)?;
        let surfaces = resolve_surfaces(state, &tasks, input)?;
        for review in input.reviews.iter() {
            state.input.review(review.model_text.len(), review.text_cut, review.language.as_deref());
        }
        // Tasks whose live models tokenize the same way share one token slot, and so do shadows
        // that reuse the live ids: a review is tokenized once, by whichever worker gets to it
        // first.
        let key = |t: usize| {
            let spec = state.tasks[t].live.spec();
            (spec.tokenizer_sha256.as_str(), spec.max_sequence_length)
        };
        let mut slots: Vec<((&str, usize), Arc<TokenSlot>)> = Vec::new();
        let mut pending = Vec::with_capacity(tasks.len());
        for &task in &tasks {
            let entry = &state.tasks[task];
            let shared = tasks.iter().filter(|&&t| key(t) == key(task)).count() > 1
                || entry.shadows.iter().any(|s| s.reuses_tokens());
            let share = shared.then(|| match slots.iter().find(|(k, _)| *k == key(task)) {
                Some((_, slot)) => slot.clone(),
                None => {
                    let slot = Arc::new(TokenSlot::new());
                    slots.push((key(task), slot.clone()));
                    slot
                }
            });
            let submitted = Instant::now();
            let scoring = entry.live.submit(input.reviews.clone(), deadline, share, caller)?;
            pending.push((entry, scoring, submitted));
        }
        let link = span.map_or_else(ShadowLink::default, CallSpan::link);
        let mut outputs = Vec::with_capacity(pending.len());
        for ((entry, scoring, submitted), surface) in pending.into_iter().zip(surfaces) {
            let spec = entry.live.spec().clone();
            let output = scoring.wait().await?;
            let deciding = Instant::now();
            let scores = output.scores;
            let n = spec.labels.len();
            let policy = entry.policy_on(surface);
            let decisions: Vec<Decision> = scores.chunks_exact(n).map(|s| policy.decide(s)).collect();
            for (s, d) in scores.chunks_exact(n).zip(&decisions) {
                entry.answered(surface, s, *d);
            }
            if let Some(span) = span {
                trace_task(span, &entry.name, &spec, policy, submitted, output.timing, deciding);
            }
            // Shadows branch off here, after the live answer is known; nothing awaits them.
            for shadow in &entry.shadows {
                shadow.offer(surface, &input.reviews, output.tokens.as_ref(), &scores, &decisions, &link);
            }
            outputs.push(TaskOutput {
                task: entry.name.clone(),
                surface: surface.map(|i| entry.surfaces[i].name.clone()),
                model: spec,
                policy: policy.clone(),
                scores,
                decisions,
            });
        }
        if let Some(journal) = &state.journal {
            journal_served(journal, input, &outputs);
        }
        Ok(ClassifyOutput { tasks: outputs })
    }
}

/// One task's steps in the call's trace: waiting in the model's queue, tokenizing and running
/// its batch (shared with other calls' jobs), and the decision.
fn trace_task(
    span: &CallSpan,
    task: &str,
    model: &ModelSpec,
    policy: &Policy,
    submitted: Instant,
    batch: BatchTiming,
    deciding: Instant,
) {
    let on = |extra: Vec<KeyValue>| {
        let mut attributes = vec![
            KeyValue::new("modserve.task", task.to_string()),
            KeyValue::new("modserve.model", model.name.clone()),
            KeyValue::new("modserve.model_version", model.version.clone()),
        ];
        attributes.extend(extra);
        attributes
    };
    span.child("queue", submitted, batch.tokenize_start.max(submitted), on(vec![]));
    span.child("tokenize", batch.tokenize_start.max(submitted), batch.infer_start, on(vec![]));
    let rows = KeyValue::new("modserve.batch_reviews", batch.rows as i64);
    span.child("inference", batch.infer_start, batch.infer_end, on(vec![rows]));
    let policy = vec![
        KeyValue::new("modserve.policy", policy.name.clone()),
        KeyValue::new("modserve.policy_version", policy.version.clone()),
    ];
    span.child("decision", deciding, Instant::now(), on(policy));
}

/// Queues the call's live decisions for the journal: the reviews are shared, the scores copied
/// (a few floats per review), the formatting and hashing left to the journal's writer thread.
fn journal_served(journal: &Journal, input: &ClassifyInput, outputs: &[TaskOutput]) {
    let tasks = outputs
        .iter()
        .map(|t| ServedTask {
            task: t.task.clone(),
            surface: t.surface.clone(),
            decider: Decider { model: t.model.clone(), policy: t.policy.clone() },
            scores: t.scores.clone(),
            decisions: t.decisions.clone(),
        })
        .collect();
    journal.served(&input.request_id, &input.reviews, tasks);
}

/// The request's surface on each of `tasks` (indices into `state.tasks`), or INVALID_ARGUMENT
/// naming `surface` when a task that rejects unknown surfaces does not list it. Fallbacks are
/// counted only once every task accepted the surface, so a refused request counts nothing.
fn resolve_surfaces(state: &ServingState, tasks: &[usize], input: &ClassifyInput) -> Result<Vec<Surface>, Error> {
    let resolved = tasks
        .iter()
        .map(|&t| state.tasks[t].surface("surface", input.surface.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    for (&t, (_, fell_back)) in tasks.iter().zip(&resolved) {
        if *fell_back {
            state.tasks[t].surface_fallbacks.increment(input.reviews.len() as u64);
        }
    }
    Ok(resolved.into_iter().map(|(surface, _)| surface).collect())
}

/// Indices into `state.tasks` for the requested names (all tasks when none are named).
fn resolve_tasks(state: &ServingState, requested: &[String]) -> Result<Vec<usize>, Error> {
    if requested.is_empty() {
        return Ok((0..state.tasks.len()).collect());
    }
    requested
        .iter()
        .enumerate()
        .map(|(i, name)| {
            state.tasks.iter().position(|t| &t.name == name).ok_or_else(|| {
                Error::invalid(
                    format!("tasks[{i}]"),
                    format!(
                        "unknown task {}; configured tasks are {:?}",
                        crate::error::excerpt(name),
                        state.task_names()
                    ),
                )
            })
        })
        .collect()
}
