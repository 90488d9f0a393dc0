//! `modserve tune`: thresholds for a task's live model solved from moderator verdicts (a
//! labelled file, as `modserve eval` reads, or the live model's scores on verdicts in
//! Prometheus), written as a named, versioned `[policies.NAME]` table to try at once as a
//! policy-only shadow.
//!
//! For label L, a review counts as flagged at threshold t when its score for L is at least t.
//! Positives are the reviews a moderator decided REVIEW or REJECT (`review-*` targets) or REJECT
//! (`reject-precision`); when a line lists `labels`, it is a positive for L only if L is among
//! them. A label with fewer labelled reviews than `--min-verdicts`, or whose target no
//! threshold meets, gets no proposal: the counts say why. With `--surface`, only the verdicts
//! of that surface count, against live's policy there.
//!
//! # Layout
//!
//! - `solve`: the pure solver over one label's scores (precision by Wilson lower bound, volume).
//! - `render`: the TOML snippet and `tune.json`.
//! - `apply`: `--apply` (the snippet written into the config file) and `--reload` (Admin/Reload).
//!
//! From a file, `tune` scores the live model with `eval`'s machinery; from Prometheus, it reads
//! `modserve_verdict_scores` (each score known to its bucket, so a review stands at its
//! bucket's lower edge). Either way `solve_task` gets one label's points at a time.

mod apply;
mod render;
mod solve;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

pub use apply::{Applied, ApplyError, ReloadError, apply, reload};
pub use render::{JSON_FILE, TOML_FILE, json, refusal_message, toml};
pub use solve::{Counts, Point, PrecisionSolution, lowest_precise, matching_volume};

use crate::control::registry::{ServingState, Surface, TaskEntry};
use crate::offline::eval::{self, Labelled};
use crate::offline::report::VerdictScores;
use crate::policy::{Decision, Thresholds};

/// Exit status of `modserve tune`: a threshold proposed for every label.
pub const EXIT_PROPOSED: u8 = 0;
/// Exit status of `modserve tune`: it could not run (flags, config, models, labelled file).
pub const EXIT_ERROR: u8 = 1;
/// Exit status of `modserve tune`: at least one label got no proposal (too few verdicts, or no
/// threshold meets the target).
pub const EXIT_NOT_PROPOSED: u8 = 2;

/// What the thresholds are solved for (`--target`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// `review-precision=P`: the lowest REVIEW threshold whose precision against human REVIEW
    /// or REJECT has a Wilson 95% lower bound of at least P.
    ReviewPrecision(f64),
    /// `reject-precision=P`: the same for REJECT against human REJECT.
    RejectPrecision(f64),
    /// `review-volume=live`: the REVIEW threshold flagging as many reviews as live's does.
    ReviewVolumeLive,
}

/// A `--target` that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TargetError {
    #[error("expected review-precision=P, reject-precision=P (0 < P < 1) or review-volume=live, got {0:?}")]
    Unknown(String),
    #[error("{0:?}: P must be a number strictly between 0 and 1 (a 95% lower bound never reaches 1)")]
    BadPrecision(String),
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Target, TargetError> {
        let (kind, value) = s.split_once('=').ok_or_else(|| TargetError::Unknown(s.to_string()))?;
        let precision = || {
            value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|p| *p > 0.0 && *p < 1.0)
                .ok_or_else(|| TargetError::BadPrecision(s.to_string()))
        };
        match kind.trim() {
            "review-precision" => Ok(Target::ReviewPrecision(precision()?)),
            "reject-precision" => Ok(Target::RejectPrecision(precision()?)),
            "review-volume" if value.trim() == "live" => Ok(Target::ReviewVolumeLive),
            _ => Err(TargetError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::ReviewPrecision(p) => write!(f, "review-precision={p}"),
            Target::RejectPrecision(p) => write!(f, "reject-precision={p}"),
            Target::ReviewVolumeLive => f.write_str("review-volume=live"),
        }
    }
}

impl Target {
    /// The threshold the target sets; the other one keeps live's value.
    pub fn sets(self) -> Decision {
        match self {
            Target::RejectPrecision(_) => Decision::Reject,
            Target::ReviewPrecision(_) | Target::ReviewVolumeLive => Decision::Review,
        }
    }
}

/// Whether a review whose moderator decided `human`, naming `labels` (empty: none named), is a
/// positive for `label` under `target`: human REVIEW or REJECT for the REVIEW threshold, REJECT
/// for the REJECT one, and `label` among the named ones when any are.
pub fn is_positive(target: Target, human: Decision, labels: &[String], label: &str) -> bool {
    human >= target.sets() && (labels.is_empty() || labels.iter().any(|l| l == label))
}

/// `--name`: a policy name by the config's rule.
pub fn parse_name(s: &str) -> Result<String, String> {
    if crate::config::is_valid_name(s) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?}: policy names use 1-64 of [a-z0-9._-]"))
    }
}

/// What `modserve tune` was asked.
#[derive(Debug, Clone)]
pub struct TuneArgs {
    pub task: String,
    pub target: Target,
    /// The policy's name; `None` is `<live model>-tuned`.
    pub name: Option<String>,
    pub min_verdicts: u64,
    /// One named surface of the task (`[tasks.TASK.surfaces]`): its verdicts only, against
    /// live's policy there; `None` is every verdict against the task's default policy.
    pub surface: Option<String>,
    /// Where the verdicts come from (named in the output).
    pub evidence: Evidence,
}

/// Where the verdicts come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Evidence {
    /// A labelled file (`--labels`), scored here by the live model.
    File(PathBuf),
    /// `modserve_verdict_scores` over `window` up to `end` (`--prometheus`): the scores the live
    /// model gave the reviews moderators judged, known to their bucket.
    Prometheus { url: String, window: Duration, end: SystemTime },
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::File(path) => write!(f, "{}", path.display()),
            Evidence::Prometheus { url, window, end } => write!(
                f,
                "Prometheus {url}, {} to {}",
                humantime::format_duration(*window),
                humantime::format_rfc3339_seconds(*end)
            ),
        }
    }
}

/// Why `tune` could not run.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error("--task: no task named {task:?}; configured tasks are {known:?}")]
    UnknownTask { task: String, known: Vec<String> },
    #[error("--surface: task {task} has no surface named {surface:?}; its surfaces are {known:?}")]
    UnknownSurface { task: String, surface: String, known: Vec<String> },
    #[error("--name: the default name {default:?} is not a valid policy name (1-64 of [a-z0-9._-]): name the policy")]
    DefaultName { default: String },
    #[error("scoring the labelled reviews: {0}")]
    Scoring(#[from] crate::error::Error),
    #[error("{path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Why one label got no proposal.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Fewer labelled reviews than `--min-verdicts`.
    TooFew { reviews: u64, min: u64 },
    /// No threshold meets the precision target; the best candidate, if any.
    Unmet { best: Option<Box<Counts>> },
    /// The live policy flags none of the reviews for this label (`review-volume=live`).
    NoLiveVolume,
    /// The solution would put review above reject.
    Inverted { review: f32, reject: f32 },
}

/// One label's answer: its live thresholds, and the proposal or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelTuning {
    pub label: String,
    pub live: Thresholds,
    /// The positives among the labelled reviews, for the messages.
    pub positives: u64,
    pub outcome: Result<Proposal, Refusal>,
}

/// A proposed threshold and the evidence behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// Both thresholds of the label: the one the target sets, and live's other one.
    pub thresholds: Thresholds,
    /// The counts at the proposed threshold.
    pub tuned: Counts,
    /// The counts at live's threshold of the same level, if live has one.
    pub live: Option<Counts>,
}

/// The result of a run: every label of the live model, in its output order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    pub task: String,
    pub model: String,
    pub model_version: String,
    pub live_policy: String,
    pub target: Target,
    pub name: String,
    /// A content hash of the proposed thresholds (see `render::version`).
    pub version: String,
    pub reviews: u64,
    pub min_verdicts: u64,
    /// The surface tuned for, if one (`live_policy` is live's policy there).
    pub surface: Option<String>,
    pub evidence: Evidence,
    pub labels: Vec<LabelTuning>,
    /// The config already has a policy of this name (pasting the snippet would clash).
    pub name_taken: bool,
}

impl Tuning {
    /// True when every label got a proposal.
    pub fn complete(&self) -> bool {
        self.labels.iter().all(|l| l.outcome.is_ok())
    }
}

/// The task `args` names and the surface asked for, resolved in `state`.
fn resolve<'a>(state: &'a ServingState, args: &TuneArgs) -> Result<(&'a TaskEntry, Surface), TuneError> {
    let entry = state.tasks.iter().find(|t| t.name == args.task).ok_or_else(|| TuneError::UnknownTask {
        task: args.task.clone(),
        known: state.task_names().into_iter().map(String::from).collect(),
    })?;
    let surface = match &args.surface {
        None => None,
        Some(name) => {
            Some(entry.surfaces.iter().position(|s| &s.name == name).ok_or_else(|| TuneError::UnknownSurface {
                task: entry.name.clone(),
                surface: name.clone(),
                known: entry.surfaces.iter().map(|s| s.name.clone()).collect(),
            })?)
        }
    };
    Ok((entry, surface))
}

/// Scores `args.task`'s labelled reviews (of `args.surface`, when named) on its live model and
/// solves every label.
pub async fn tune(
    state: &ServingState,
    labelled: &[Labelled],
    args: &TuneArgs,
    progress: impl FnMut(usize, usize),
) -> Result<Tuning, TuneError> {
    let (entry, surface) = resolve(state, args)?;
    let rows: Vec<&Labelled> =
        labelled.iter().filter(|l| l.task == entry.name && (args.surface.is_none() || l.surface == surface)).collect();
    let reviews: Vec<_> = rows.iter().map(|l| l.review.clone()).collect();
    let scored = eval::score(&entry.live, &reviews, progress).await?;
    let spec = entry.live.spec();
    let points = (0..spec.labels.len())
        .map(|j| {
            rows.iter()
                .enumerate()
                .map(|(i, row)| Point {
                    score: scored.scores.get(i * scored.labels + j).copied().unwrap_or(0.0),
                    positive: is_positive(args.target, row.human, &row.labels, &spec.labels[j]),
                })
                .collect()
        })
        .collect();
    solve_task(state, entry, surface, points, args)
}

/// The live model `args` tunes (its task and surface checked first, so a typo is reported
/// before anything is fetched).
pub fn live_model<'a>(
    state: &'a ServingState,
    args: &TuneArgs,
) -> Result<&'a crate::inference::model::ModelSpec, TuneError> {
    resolve(state, args).map(|(entry, _)| entry.live.spec().as_ref())
}

/// Solves every label of `args.task`'s live model from its scores on verdicts in Prometheus
/// (`modserve_verdict_scores` of the live model and version now configured; `fetched` by
/// `report::verdict_scores`).
pub fn tune_from_histograms(
    state: &ServingState,
    fetched: &VerdictScores,
    args: &TuneArgs,
) -> Result<Tuning, TuneError> {
    let (entry, surface) = resolve(state, args)?;
    let points = entry
        .live
        .spec()
        .labels
        .iter()
        .map(|label| {
            fetched
                .buckets(label)
                .flat_map(|(lower, human, n)| {
                    let point = Point { score: lower as f32, positive: human >= args.target.sets() };
                    std::iter::repeat_n(point, n as usize)
                })
                .collect()
        })
        .collect();
    solve_task(state, entry, surface, points, args)
}

/// Solves every label of `entry`'s live model (on `surface`) from its points, one list per
/// label in the model's output order, each with one point per labelled review.
pub fn solve_task(
    state: &ServingState,
    entry: &TaskEntry,
    surface: Surface,
    points: Vec<Vec<Point>>,
    args: &TuneArgs,
) -> Result<Tuning, TuneError> {
    let spec = entry.live.spec();
    let live_policy = entry.policy_on(surface);
    let reviews = points.first().map_or(0, |p| p.len() as u64);
    let labels = spec
        .labels
        .iter()
        .zip(&points)
        .enumerate()
        .map(|(j, (label, points))| {
            let live = live_policy.thresholds.get(j).copied().flatten().unwrap_or_default();
            solve_label(label, live, points, args)
        })
        .collect();
    let name = match (&args.name, &args.surface) {
        (Some(name), _) => name.clone(),
        (None, None) => format!("{}-tuned", spec.name),
        (None, Some(surface)) => format!("{}-tuned-{surface}", spec.name),
    };
    if !crate::config::is_valid_name(&name) {
        return Err(TuneError::DefaultName { default: name });
    }
    let mut tuning = Tuning {
        task: entry.name.clone(),
        model: spec.name.clone(),
        model_version: spec.version.clone(),
        live_policy: live_policy.name.clone(),
        target: args.target,
        name_taken: state.config.policies.contains_key(&name),
        name,
        version: String::new(),
        reviews,
        min_verdicts: args.min_verdicts,
        surface: args.surface.clone(),
        evidence: args.evidence.clone(),
        labels,
    };
    tuning.version = render::version(&tuning);
    Ok(tuning)
}

/// One label: the threshold its target sets, live's other one, or why there is none.
pub fn solve_label(label: &str, live: Thresholds, points: &[Point], args: &TuneArgs) -> LabelTuning {
    let positives = points.iter().filter(|p| p.positive).count() as u64;
    let reviews = points.len() as u64;
    let sets = args.target.sets();
    let live_threshold = if sets == Decision::Reject { live.reject } else { live.review };
    let live_counts = live_threshold.map(|t| solve::at(points, t));
    let outcome = if reviews < args.min_verdicts {
        Err(Refusal::TooFew { reviews, min: args.min_verdicts })
    } else {
        match args.target {
            Target::ReviewPrecision(p) | Target::RejectPrecision(p) => match lowest_precise(points, p) {
                PrecisionSolution::Met(c) => Ok(c),
                PrecisionSolution::Unmet(best) => Err(Refusal::Unmet { best: best.map(Box::new) }),
            },
            // On the live model's own scores this is live's threshold, which flags that volume
            // by definition; `matching_volume` matters for ties and for other scores.
            Target::ReviewVolumeLive => live_counts
                .filter(|c| c.flagged > 0)
                .and_then(|live| {
                    let tuned = matching_volume(points, live.flagged)?;
                    Some(if tuned.flagged == live.flagged { live } else { tuned })
                })
                .ok_or(Refusal::NoLiveVolume),
        }
        .and_then(|tuned| {
            let thresholds = match sets {
                Decision::Reject => Thresholds { review: live.review, reject: Some(tuned.threshold) },
                _ => Thresholds { review: Some(tuned.threshold), reject: live.reject },
            };
            match (thresholds.review, thresholds.reject) {
                (Some(review), Some(reject)) if review > reject => Err(Refusal::Inverted { review, reject }),
                _ => Ok(Proposal { thresholds, tuned, live: live_counts }),
            }
        })
    };
    LabelTuning { label: label.to_string(), live, positives, outcome }
}

/// Writes `policy.toml` and `tune.json` into `dir` (created if missing).
pub fn write(tuning: &Tuning, dir: &Path) -> Result<(), TuneError> {
    let wrap = |path: PathBuf| move |source| TuneError::Write { path, source };
    std::fs::create_dir_all(dir).map_err(wrap(dir.to_path_buf()))?;
    let toml = dir.join(TOML_FILE);
    std::fs::write(&toml, render::toml(tuning)).map_err(wrap(toml.clone()))?;
    let json = dir.join(JSON_FILE);
    std::fs::write(&json, render::json(tuning)).map_err(wrap(json.clone()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(target: Target, min_verdicts: u64) -> TuneArgs {
        TuneArgs {
            task: "abuse".into(),
            target,
            name: None,
            min_verdicts,
            surface: None,
            evidence: Evidence::File("l.jsonl".into()),
        }
    }

    fn points(rows: &[(f32, bool)]) -> Vec<Point> {
        rows.iter().map(|&(score, positive)| Point { score, positive }).collect()
    }

    #[test]
    fn targets_parse_and_print_back() {
        for s in ["review-precision=0.9", "reject-precision=0.95", "review-volume=live"] {
            assert_eq!(s.parse::<Target>().unwrap().to_string(), s);
        }
        assert_eq!("review-precision=0.9".parse::<Target>().unwrap().sets(), Decision::Review);
        assert_eq!("reject-precision=0.9".parse::<Target>().unwrap().sets(), Decision::Reject);
    }

    #[test]
    fn malformed_targets_say_what_is_expected() {
        for bad in ["", "precision=0.9", "review-precision", "review-volume=2x", "review-recall=0.9"] {
            assert!(matches!(bad.parse::<Target>(), Err(TargetError::Unknown(_))), "{bad}");
        }
        for bad in ["review-precision=1", "review-precision=0", "reject-precision=x", "review-precision=NaN"] {
            assert!(matches!(bad.parse::<Target>(), Err(TargetError::BadPrecision(_))), "{bad}");
        }
    }

    #[test]
    fn positives_follow_the_target_and_the_named_labels() {
        let review = Target::ReviewPrecision(0.9);
        let reject = Target::RejectPrecision(0.9);
        let none: &[String] = &[];
        assert!(is_positive(review, Decision::Review, none, "insult"));
        assert!(is_positive(review, Decision::Reject, none, "insult"));
        assert!(!is_positive(review, Decision::Allow, none, "insult"));
        assert!(!is_positive(reject, Decision::Review, none, "insult"));
        assert!(is_positive(reject, Decision::Reject, none, "insult"));
        assert!(is_positive(Target::ReviewVolumeLive, Decision::Review, none, "insult"));
        // Rejected for a threat: a threat positive, not an insult one.
        let threat = ["threat".to_string()];
        assert!(is_positive(reject, Decision::Reject, &threat, "threat"));
        assert!(!is_positive(reject, Decision::Reject, &threat, "insult"));
        // Naming a label does not make an ALLOW a positive.
        assert!(!is_positive(review, Decision::Allow, &threat, "threat"));
    }

    #[test]
    fn names_follow_the_config_rule() {
        assert!(parse_name("abuse-v1-tuned").is_ok());
        assert!(parse_name("Abuse").is_err() && parse_name("").is_err() && parse_name("a b").is_err());
    }

    #[test]
    fn too_few_reviews_get_no_proposal() {
        let live = Thresholds { review: Some(0.5), reject: Some(0.9) };
        let t = solve_label("insult", live, &points(&[(0.9, true); 5]), &args(Target::ReviewPrecision(0.1), 6));
        assert_eq!(t.outcome, Err(Refusal::TooFew { reviews: 5, min: 6 }));
    }

    #[test]
    fn a_review_target_keeps_live_reject_and_refuses_to_cross_it() {
        // 5 of 5 positives at 0.8 and above (lower bound 5/8.8416 = 0.5655), then negatives.
        let rows = [(0.95, true), (0.9, true), (0.85, true), (0.82, true), (0.8, true), (0.3, false), (0.2, false)];
        let live = Thresholds { review: Some(0.5), reject: Some(0.9) };
        let t = solve_label("insult", live, &points(&rows), &args(Target::ReviewPrecision(0.5), 0));
        let p = t.outcome.unwrap();
        assert_eq!(p.thresholds, Thresholds { review: Some(0.8), reject: Some(0.9) });
        assert_eq!(p.live.map(|c| (c.flagged, c.hits)), Some((5, 5)));
        // Live rejects at 0.7: the review threshold 0.8 would be above it.
        let low_reject = Thresholds { review: Some(0.5), reject: Some(0.7) };
        let t = solve_label("insult", low_reject, &points(&rows), &args(Target::ReviewPrecision(0.5), 0));
        assert_eq!(t.outcome, Err(Refusal::Inverted { review: 0.8, reject: 0.7 }));
    }

    #[test]
    fn volume_matches_live_and_needs_live_to_flag_something() {
        let rows = points(&[(0.9, true), (0.7, false), (0.6, true), (0.2, false)]);
        let live = Thresholds { review: Some(0.65), reject: None };
        let t = solve_label("insult", live, &rows, &args(Target::ReviewVolumeLive, 0));
        let p = t.outcome.unwrap();
        // Live's 0.65 already flags 2: it is the answer (any value in (0.6, 0.7] would do).
        assert_eq!((p.tuned.threshold, p.tuned.flagged), (0.65, 2));
        assert_eq!(p.thresholds.reject, None);
        let none = Thresholds { review: Some(0.95), reject: None };
        assert_eq!(
            solve_label("insult", none, &rows, &args(Target::ReviewVolumeLive, 0)).outcome,
            Err(Refusal::NoLiveVolume)
        );
    }
}
