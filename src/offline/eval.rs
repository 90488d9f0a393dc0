//! `modserve eval`: the dry run before the dry run. Runs every model of the config (each task's
//! live model and every shadow, every policy) over a labelled file of reviews and builds, for
//! each shadow, the same launch report `modserve report` builds from Prometheus, with the file's
//! labels as the moderator verdicts. A candidate that loses on history never needs to see
//! traffic.
//!
//! The labelled file is JSON lines, one review per line, in the Classify request's field names
//! plus the task and the human decision:
//!
//! ```json
//! {"id": "r1", "text": "You are an idiot.", "task": "abuse", "decision": "reject"}
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Limits;
use crate::control::registry::{ServingState, TaskEntry};
use crate::error::Error;
use crate::inference::worker::ModelHandle;
use crate::metrics::ShadowOutcome;
use crate::offline::report::{ReportInput, Source, Subject, Verdicts, cumulative_buckets};
use crate::policy::{Confusion, Decision, Policy};
use crate::request::{self, Caller, RawReview, ReviewInput, Surface};
use crate::shadow::compare;

/// Reviews sent to a model at once.
const CHUNK: usize = 32;

/// One line of the labelled file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabelled {
    id: String,
    text: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    rating: Option<f32>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    signals: std::collections::HashMap<String, f64>,
    task: String,
    decision: String,
    #[serde(default)]
    labels: Vec<String>,
    /// The review's surface, as a Classify request names it.
    #[serde(default)]
    surface: Option<String>,
}

/// A validated labelled review.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub review: ReviewInput,
    pub task: String,
    pub human: Decision,
    /// The labels the moderator named (the line's optional `labels`), each one the task's;
    /// empty when the line names none. `modserve tune` counts a review as a label's positive
    /// only if this is empty or names the label.
    pub labels: Vec<String>,
    /// The task's surface the review was on: it picks the live policy, and which shadows see it.
    pub surface: Surface,
}

/// Reads and validates the labelled file against the serving state: every problem is reported,
/// each naming its line (`labels.jsonl:12: decision: ...`).
pub fn read_labels(path: &Path, state: &ServingState) -> Result<Vec<Labelled>, Vec<String>> {
    let file = std::fs::File::open(path).map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    let limits: Limits = state.config.limits;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                errors.push(format!("{at}: cannot read: {e}"));
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line, state, &limits) {
            Ok(l) if !seen.insert((l.review.id.clone(), l.task.clone())) => {
                errors.push(format!("{at}: id {:?} appears twice for task {}", l.review.id, l.task))
            }
            Ok(l) => out.push(l),
            Err(e) => errors.push(format!("{at}: {e}")),
        }
        if errors.len() >= 20 {
            errors.push("... (stopped after 20 problems)".into());
            break;
        }
    }
    if out.is_empty() && errors.is_empty() {
        errors.push(format!("{}: no labelled reviews", path.display()));
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

fn parse_line(line: &str, state: &ServingState, limits: &Limits) -> Result<Labelled, String> {
    let raw: RawLabelled = serde_json::from_str(line).map_err(|e| format!("not a labelled review: {e}"))?;
    let entry =
        state.tasks.iter().find(|t| t.name == raw.task).ok_or_else(|| {
            format!("task: unknown task {:?}; configured tasks are {:?}", raw.task, state.task_names())
        })?;
    let human = Decision::from_name(&raw.decision)
        .ok_or_else(|| format!("decision: {:?} is not allow, review or reject", raw.decision.to_ascii_lowercase()))?;
    if let Some(label) = raw.labels.iter().find(|l| !entry.has_label(l)) {
        return Err(format!("labels: {label:?} is not a label of task {}'s models", entry.name));
    }
    let labels = raw.labels;
    if raw.surface.as_deref() == Some("") {
        return Err("surface: must not be empty; leave it out for the default surface".into());
    }
    // The same resolution as a Classify request's (an unknown surface refused or taken as the
    // default, as the task says).
    let (surface, _) = entry.surface("surface", raw.surface.as_deref()).map_err(|e| e.to_string())?;
    let review = RawReview {
        id: raw.id,
        text: raw.text,
        title: raw.title,
        rating: raw.rating,
        language: raw.language,
        signals: raw.signals,
    };
    // The same rules as a Classify request; field names lose the `reviews[i].` prefix.
    let review = request::validate_one(review, limits).map_err(|e| e.to_string())?;
    Ok(Labelled { review, task: entry.name.clone(), human, labels, surface })
}

/// Scores of one model over a task's labelled reviews, row-major: review `i`'s score for label
/// `j` (the model's output order) is `scores[i * labels + j]`.
pub struct Scored {
    pub scores: Vec<f32>,
    pub labels: usize,
}

/// Scores `reviews` on `model` as `evaluate` does, a chunk at a time; `progress` is told the
/// reviews done so far and `reviews.len()`. `modserve tune` scores the live model with it.
pub async fn score(
    model: &ModelHandle,
    reviews: &[ReviewInput],
    mut progress: impl FnMut(usize, usize),
) -> Result<Scored, Error> {
    let mut done = 0;
    run(model, reviews, &mut done, reviews.len(), &mut progress).await
}

/// The lines on the surface named `surface` (of their task), for judging there alone; an error
/// naming `--surface` when no task lists it or no line is on it.
pub fn on_surface(labelled: Vec<Labelled>, state: &ServingState, surface: &str) -> Result<Vec<Labelled>, String> {
    let index = |task: &str| {
        let entry = state.tasks.iter().find(|t| t.name == task)?;
        entry.surfaces.iter().position(|s| s.name == surface)
    };
    if !state.tasks.iter().any(|t| index(&t.name).is_some()) {
        let known: Vec<String> =
            state.tasks.iter().flat_map(|t| t.surfaces.iter().map(|s| format!("{}/{}", t.name, s.name))).collect();
        return Err(format!("--surface: no task lists a surface named {surface:?}; the surfaces are {known:?}"));
    }
    let kept: Vec<Labelled> =
        labelled.into_iter().filter(|l| l.surface.is_some() && l.surface == index(&l.task)).collect();
    if kept.is_empty() {
        return Err(format!("--surface: no labelled line is on surface {surface:?}"));
    }
    Ok(kept)
}

/// Runs every model of every task over `labelled` and returns one report input per shadow, in
/// config order. `progress` is told the reviews done so far and the total.
pub async fn evaluate(
    state: &ServingState,
    labelled: &[Labelled],
    labels_file: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<ReportInput>, Error> {
    // Each task's reviews go through its live model and every shadow that runs inference and is
    // offered their surface.
    let total: usize = state
        .tasks
        .iter()
        .map(|t| {
            let rows = labelled.iter().filter(|l| l.task == t.name);
            let shadows: usize = t
                .shadows
                .iter()
                .filter(|s| !s.policy_only)
                .map(|s| rows.clone().filter(|l| s.offered_on(l.surface)).count())
                .sum();
            rows.count() + shadows
        })
        .sum();
    let mut done = 0;
    let mut inputs = Vec::new();
    for entry in &state.tasks {
        let rows: Vec<&Labelled> = labelled.iter().filter(|l| l.task == entry.name).collect();
        if rows.is_empty() {
            continue;
        }
        let reviews: Vec<ReviewInput> = rows.iter().map(|l| l.review.clone()).collect();
        let human: Vec<Decision> = rows.iter().map(|l| l.human).collect();
        let live = run(&entry.live, &reviews, &mut done, total, &mut progress).await?;
        // Each review under the live policy of its surface, as it was served.
        let live_decisions: Vec<Decision> = live
            .scores
            .chunks_exact(live.labels)
            .zip(&rows)
            .map(|(s, l)| entry.policy_on(l.surface).decide(s))
            .collect();
        for pair in &entry.shadows {
            // The reviews this shadow is offered online: those on its surfaces.
            let picked: Vec<usize> = (0..rows.len()).filter(|&i| pair.offered_on(rows[i].surface)).collect();
            if picked.is_empty() {
                continue;
            }
            let n = live.labels;
            let live = Scored {
                scores: picked.iter().flat_map(|&i| live.scores[i * n..(i + 1) * n].iter().copied()).collect(),
                labels: n,
            };
            let live_decisions: Vec<Decision> = picked.iter().map(|&i| live_decisions[i]).collect();
            let human: Vec<Decision> = picked.iter().map(|&i| human[i]).collect();
            let shadow = if pair.policy_only {
                Scored { scores: live.scores.clone(), labels: live.labels }
            } else {
                let reviews: Vec<ReviewInput> = picked.iter().map(|&i| reviews[i].clone()).collect();
                run(&pair.shadow, &reviews, &mut done, total, &mut progress).await?
            };
            inputs.push(report_input(
                entry,
                (&live, &live_decisions),
                (&pair.shadow, &pair.decision_policy, pair.policy_only, &shadow),
                &human,
                labels_file,
            ));
        }
    }
    Ok(inputs)
}

/// Scores `reviews` on `model`, a chunk at a time.
async fn run(
    model: &ModelHandle,
    reviews: &[ReviewInput],
    done: &mut usize,
    total: usize,
    progress: &mut impl FnMut(usize, usize),
) -> Result<Scored, Error> {
    let mut scores = Vec::with_capacity(reviews.len() * model.spec().labels.len());
    for chunk in reviews.chunks(CHUNK) {
        let output = model.submit(Arc::from(chunk), None, None, Caller::SERVER)?.wait().await?;
        scores.extend_from_slice(&output.scores);
        *done += chunk.len();
        progress(*done, total);
    }
    Ok(Scored { scores, labels: model.spec().labels.len() })
}

fn subject(model: &ModelHandle, policy: &Policy) -> Subject {
    Subject {
        model: model.spec().name.clone(),
        version: model.spec().version.clone(),
        policy: policy.name.clone(),
        policy_version: policy.version.clone(),
    }
}

fn report_input(
    entry: &TaskEntry,
    (live, live_decisions): (&Scored, &[Decision]),
    (shadow_model, shadow_policy, policy_only, shadow): (&ModelHandle, &Policy, bool, &Scored),
    human: &[Decision],
    labels_file: &Path,
) -> ReportInput {
    let n = human.len();
    let mut comparisons = Confusion::<u64>::default();
    let mut verdicts = Verdicts::default();
    let live_labels = &entry.live.spec().labels;
    let shadow_labels = &shadow_model.spec().labels;
    let mut deltas: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in 0..n {
        let l_scores = &live.scores[i * live.labels..(i + 1) * live.labels];
        let s_scores = &shadow.scores[i * shadow.labels..(i + 1) * shadow.labels];
        let s_decision = shadow_policy.decide(s_scores);
        comparisons[(live_decisions[i], s_decision)] += 1;
        verdicts.live[(live_decisions[i], human[i])] += 1;
        verdicts.candidate[(s_decision, human[i])] += 1;
        if policy_only {
            continue;
        }
        for (label, delta) in compare::score_deltas(live_labels, l_scores, shadow_labels, s_scores) {
            deltas.entry(label.to_string()).or_default().push(f64::from(delta));
        }
    }
    // The server's buckets, so an offline report reads like an online one.
    let score_deltas =
        deltas.into_iter().map(|(label, d)| (label, cumulative_buckets(crate::metrics::DELTA_BUCKETS, d))).collect();
    ReportInput {
        source: Source::Offline { labels_file: labels_file.to_path_buf(), reviews: n as u64 },
        task: entry.name.clone(),
        live: subject(&entry.live, &entry.policy),
        candidate: subject(shadow_model, shadow_policy),
        outcomes: [(ShadowOutcome::Compared.as_str().to_string(), n as u64)].into(),
        comparisons,
        score_deltas,
        latency: None,
        sample_rate: None,
        live_errors: 0,
        live_batches: 0,
        candidate_errors: 0,
        candidate_batches: 0,
        verdicts: Some(verdicts),
        labelled: Vec::new(),
        disagreements: None,
        notes: vec![format!(
            "Offline evaluation: {n} labelled reviews of task {} from {}; the labels stand in for moderator verdicts. \
             No traffic, so no latency, shedding or errors.",
            entry.name,
            labels_file.display()
        )],
    }
}

/// The folder and file stem of one candidate's report: `OUT/TASK-MODEL[-POLICY]/`.
pub fn report_dir(out: &Path, input: &ReportInput) -> PathBuf {
    let mut name = format!("{}-{}", input.task, input.candidate.model);
    if input.policy_only() || input.candidate.policy != "default" {
        name.push('-');
        name.push_str(&input.candidate.policy);
    }
    out.join(name)
}

/// A progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise.
pub fn progress_bar() -> impl FnMut(usize, usize) {
    let tty = std::io::stderr().is_terminal();
    let mut last_tenth = 0;
    move |done, total| {
        let total = total.max(1);
        let mut err = std::io::stderr().lock();
        if tty {
            let width = 30;
            let filled = done * width / total;
            let _ =
                write!(err, "\r[{}{}] {done}/{total} reviews scored", "#".repeat(filled), ".".repeat(width - filled));
            if done >= total {
                let _ = writeln!(err);
            }
        } else if done * 10 / total > last_tenth || done >= total {
            last_tenth = done * 10 / total;
            let _ = writeln!(err, "{done}/{total} reviews scored");
        }
    }
}
