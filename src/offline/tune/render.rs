//! The renderings of a `Tuning`: the TOML snippet to paste into the config (printed, and
//! `policy.toml`), the refusal messages, and `tune.json`.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Counts, Evidence, LabelTuning, Proposal, Refusal, Tuning};
use crate::policy::{Decision, Thresholds};

/// The snippet, written by `--out`.
pub const TOML_FILE: &str = "policy.toml";
/// The machine-readable result, written by `--out`.
pub const JSON_FILE: &str = "tune.json";

/// The policy version: `tune-` and the first 12 hex digits of the sha256 of the thresholds.
/// Deterministic, unlike a timestamp: the same thresholds always get the same version, so
/// re-running on the same file proposes the same policy, and any change of a threshold shows
/// as a new version in `modserve_*{policy_version}` and the reports.
pub fn version(tuning: &Tuning) -> String {
    let mut canonical = String::new();
    for l in &tuning.labels {
        let t = proposed(l);
        let _ = writeln!(canonical, "{}\t{:?}\t{:?}", l.label, t.review, t.reject);
    }
    let hash = crate::config::sha256_hex(canonical.as_bytes());
    format!("tune-{}", &hash[..12])
}

/// The thresholds a label ends with: the proposal's, or live's when there is none.
fn proposed(l: &LabelTuning) -> Thresholds {
    l.outcome.as_ref().map_or(l.live, |p| p.thresholds)
}

/// A TOML key: bare when it can be, quoted otherwise (a `.` would split a bare key).
fn key(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

/// A threshold as TOML: `{:?}` prints the shortest text that reads back as the same `f32`, and
/// always as a float (`1.0`, not `1`), so the config loads exactly the threshold counted here.
fn threshold(t: f32) -> String {
    format!("{t:?}")
}

fn figures(c: &Counts) -> String {
    let (lo, hi) = c.precision.ci95.unwrap_or((0.0, 0.0));
    format!(
        "precision {} = {}/{} flagged (Wilson 95%: {lo:.3}-{hi:.3}), recall {} = {}/{}",
        pct(c.precision.value),
        c.hits,
        c.flagged,
        pct(c.recall.value),
        c.hits,
        c.positives
    )
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"))
}

/// Why a label got no proposal, naming it and the counts.
pub fn refusal_message(tuning: &Tuning, l: &LabelTuning) -> Option<String> {
    let refusal = l.outcome.as_ref().err()?;
    let level = tuning.target.sets().as_str();
    let label = &l.label;
    Some(match refusal {
        Refusal::TooFew { reviews, min } => format!(
            "{label}: {reviews} labelled reviews of task {}, fewer than the {min} needed (--min-verdicts, by default \
             [launch].min_verdicts); no threshold proposed",
            tuning.task
        ),
        Refusal::Unmet { best } => {
            let best = best
                .as_ref()
                .map_or_else(String::new, |b| format!("; the best is {}: {}", threshold(b.threshold), figures(b)));
            format!(
                "{label}: no {level} threshold meets {} by its Wilson 95% lower bound on {} labelled reviews \
                 ({} positives){best}",
                tuning.target, tuning.reviews, l.positives
            )
        }
        Refusal::NoLiveVolume => format!(
            "{label}: the live review threshold ({}) flags none of the {} labelled reviews: no volume to match",
            l.live.review.map_or_else(|| "none".to_string(), threshold),
            tuning.reviews
        ),
        Refusal::Inverted { review, reject } => format!(
            "{label}: the solution breaks review <= reject: review {} > reject {} ({} kept from live); a policy \
             needs review <= reject per label, so tune the other threshold too or change the target",
            threshold(*review),
            threshold(*reject),
            if tuning.target.sets() == Decision::Review { "reject" } else { "review" }
        ),
    })
}

/// The snippet: a header, the `[policies.NAME]` table with the evidence behind each proposed
/// threshold, and the policy-only shadow entry to try it. Without a proposal for every label,
/// the header and why, and no table.
pub fn toml(tuning: &Tuning) -> String {
    let mut out = String::new();
    header(&mut out, tuning);
    if !tuning.complete() {
        for l in &tuning.labels {
            if let Some(m) = refusal_message(tuning, l) {
                let _ = writeln!(out, "# Not proposed: {m}");
            }
        }
        return out;
    }
    if tuning.name_taken {
        let _ = writeln!(out, "# Note: the config already has [policies.{}]: replace it, or pick --name.", tuning.name);
    }
    let table = format!("policies.{}", key(&tuning.name));
    let _ = writeln!(out, "[{table}]\nversion = \"{}\"", tuning.version);
    for l in &tuning.labels {
        if let Ok(p) = &l.outcome {
            thresholds(&mut out, tuning, &table, l, p);
        }
    }
    let surfaces = tuning.surface.as_ref().map_or_else(String::new, |s| format!(", surfaces = [{s:?}]"));
    let _ = writeln!(
        out,
        "# To try it beside live, add this policy-only shadow to [tasks.{}] shadows (keep any others), then \
         reload (SIGHUP or Admin/Reload):\n# shadows = [{{ model = \"{}\", policy = \"{}\", sample_rate = 1.0{surfaces} }}]",
        key(&tuning.task),
        tuning.model,
        tuning.name
    );
    out
}

/// The bucket edge live's threshold `t` is counted at when the scores are known to their
/// bucket only (the lowest edge at or above it), if that is not `t` itself.
fn counted_at(tuning: &Tuning, t: f32) -> Option<f32> {
    if !matches!(tuning.evidence, Evidence::Prometheus { .. }) {
        return None;
    }
    let edge = crate::metrics::SCORE_BUCKETS.iter().map(|&e| e as f32).find(|&e| e >= t)?;
    (edge != t).then_some(edge)
}

/// What was tuned, on what, and how a proposal is judged.
fn header(out: &mut String, tuning: &Tuning) {
    let surface = tuning
        .surface
        .as_ref()
        .map_or_else(String::new, |s| format!(", surface {s} (live policy {})", tuning.live_policy));
    let _ = writeln!(
        out,
        "# modserve tune: task {}, model {} {}{surface}, target {}, {} labelled reviews ({})",
        tuning.task, tuning.model, tuning.model_version, tuning.target, tuning.reviews, tuning.evidence
    );
    let positives = match tuning.target.sets() {
        Decision::Reject => "REJECT",
        _ => "REVIEW or REJECT",
    };
    let _ = writeln!(
        out,
        "# Positives: reviews a moderator decided {positives} (a verdict listing `labels` counts for those labels only)."
    );
    let on = match tuning.evidence {
        Evidence::File(_) => "this file",
        Evidence::Prometheus { .. } => "these verdicts",
    };
    let _ = match tuning.target {
        super::Target::ReviewVolumeLive => {
            writeln!(out, "# Figures are on {on}; the threshold flags at most as many reviews as live's.")
        }
        _ => writeln!(out, "# Figures are on {on}; the target is met by the Wilson 95% lower bound of precision."),
    };
    if let Evidence::Prometheus { .. } = tuning.evidence {
        let _ = writeln!(
            out,
            "# Scores are known to their bucket of modserve_verdict_scores (0.05 wide): thresholds are bucket edges, \
             and a live threshold between edges is counted at the edge above it."
        );
    }
}

/// `[policies.NAME.thresholds.LABEL]`: the tuned threshold with its evidence, the other level kept.
fn thresholds(out: &mut String, tuning: &Tuning, table: &str, l: &LabelTuning, p: &Proposal) {
    let set = tuning.target.sets();
    let _ = writeln!(out, "[{table}.thresholds.{}]", key(&l.label));
    for level in [Decision::Review, Decision::Reject] {
        let (value, live) = match level {
            Decision::Reject => (p.thresholds.reject, l.live.reject),
            _ => (p.thresholds.review, l.live.review),
        };
        let name = level.as_str();
        if level != set {
            match value {
                Some(v) => {
                    let _ = writeln!(out, "{name} = {}   # kept from live", threshold(v));
                }
                None => {
                    let _ = writeln!(out, "# {name}: none, as live");
                }
            }
            continue;
        }
        let live = match (live, &p.live) {
            (Some(t), Some(c)) => match counted_at(tuning, t) {
                Some(edge) => format!("live {} (counted at {}): {}", threshold(t), threshold(edge), figures(c)),
                None => format!("live {}: {}", threshold(t), figures(c)),
            },
            _ => "live: none".to_string(),
        };
        let volume = if matches!(tuning.target, super::Target::ReviewVolumeLive) {
            format!("flags {} of {} (live {}); ", p.tuned.flagged, p.tuned.reviews, p.live.map_or(0, |c| c.flagged))
        } else {
            String::new()
        };
        let _ = writeln!(out, "{name} = {}   # {volume}{}; {live}", threshold(p.tuned.threshold), figures(&p.tuned));
    }
}

#[derive(Serialize)]
struct JsonTuning<'a> {
    task: &'a str,
    model: &'a str,
    model_version: &'a str,
    live_policy: &'a str,
    target: String,
    /// "review" or "reject": the threshold the target sets.
    sets: &'static str,
    policy: JsonPolicy<'a>,
    reviews: u64,
    min_verdicts: u64,
    /// The surface tuned for (`live_policy` is live's there); null: the default surface.
    surface: Option<&'a str>,
    /// The labelled file, when the verdicts came from one.
    labels_file: Option<String>,
    /// The Prometheus window, when the verdicts came from `modserve_verdict_scores`.
    prometheus: Option<JsonPrometheus>,
    /// Every label got a proposal (exit status 0).
    complete: bool,
    labels: Vec<JsonLabel<'a>>,
}

#[derive(Serialize)]
struct JsonPrometheus {
    url: String,
    window_seconds: u64,
    /// RFC 3339.
    end: String,
}

#[derive(Serialize)]
struct JsonPolicy<'a> {
    name: &'a str,
    version: &'a str,
}

#[derive(Serialize)]
struct JsonLabel<'a> {
    label: &'a str,
    proposed: bool,
    /// Why not, when not proposed.
    reason: Option<String>,
    /// The label's positives among the labelled reviews.
    positives: u64,
    /// The proposed thresholds (live's when not proposed).
    thresholds: Thresholds,
    live_thresholds: Thresholds,
    /// Counts at the proposed threshold.
    tuned: Option<Counts>,
    /// Counts at live's threshold of the same level.
    live: Option<Counts>,
}

/// `tune.json`: the run, and per label the thresholds, counts, precision and recall with their
/// intervals, and live's figures.
pub fn json(tuning: &Tuning) -> String {
    let doc = JsonTuning {
        task: &tuning.task,
        model: &tuning.model,
        model_version: &tuning.model_version,
        live_policy: &tuning.live_policy,
        target: tuning.target.to_string(),
        sets: tuning.target.sets().as_str(),
        policy: JsonPolicy { name: &tuning.name, version: &tuning.version },
        reviews: tuning.reviews,
        min_verdicts: tuning.min_verdicts,
        surface: tuning.surface.as_deref(),
        labels_file: match &tuning.evidence {
            Evidence::File(path) => Some(path.display().to_string()),
            Evidence::Prometheus { .. } => None,
        },
        prometheus: match &tuning.evidence {
            Evidence::File(_) => None,
            Evidence::Prometheus { url, window, end } => Some(JsonPrometheus {
                url: url.clone(),
                window_seconds: window.as_secs(),
                end: humantime::format_rfc3339_seconds(*end).to_string(),
            }),
        },
        complete: tuning.complete(),
        labels: tuning
            .labels
            .iter()
            .map(|l| JsonLabel {
                label: &l.label,
                proposed: l.outcome.is_ok(),
                reason: refusal_message(tuning, l),
                positives: l.positives,
                thresholds: proposed(l),
                live_thresholds: l.live,
                tuned: l.outcome.as_ref().ok().map(|p| p.tuned),
                live: l.outcome.as_ref().ok().and_then(|p| p.live),
            })
            .collect(),
    };
    // Plain data with string keys: serialising cannot fail.
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::super::{Proposal, Target};
    use super::*;
    use crate::offline::report::Estimate;

    fn counts(threshold: f32, flagged: u64, hits: u64) -> Counts {
        Counts {
            threshold,
            flagged,
            hits,
            positives: 10,
            reviews: 40,
            precision: Estimate::new(hits, flagged),
            recall: Estimate::new(hits, 10),
        }
    }

    fn tuning(name: &str, outcome: Result<Proposal, Refusal>) -> Tuning {
        let live = Thresholds { review: Some(0.6), reject: Some(0.95) };
        let mut t = Tuning {
            task: "abuse".into(),
            model: "abuse-v1".into(),
            model_version: "1.0.0".into(),
            live_policy: "default".into(),
            target: Target::ReviewPrecision(0.8),
            name: name.into(),
            version: String::new(),
            reviews: 40,
            min_verdicts: 20,
            surface: None,
            evidence: Evidence::File("l.jsonl".into()),
            labels: vec![LabelTuning { label: "insult".into(), live, positives: 10, outcome }],
            name_taken: false,
        };
        t.version = version(&t);
        t
    }

    fn proposal() -> Proposal {
        Proposal {
            thresholds: Thresholds { review: Some(0.45), reject: Some(0.95) },
            tuned: counts(0.45, 9, 9),
            live: Some(counts(0.6, 6, 6)),
        }
    }

    #[test]
    fn the_snippet_is_a_policy_table_under_any_valid_name() {
        // A `.` is allowed in a policy name and would split a bare TOML key.
        let t = tuning("abuse.v1-tuned", Ok(proposal()));
        let snippet = toml(&t);
        let doc: toml::Table = toml::from_str(&snippet).unwrap_or_else(|e| panic!("{e}\n{snippet}"));
        let policy = &doc["policies"]["abuse.v1-tuned"];
        assert_eq!(policy["version"].as_str(), Some(t.version.as_str()));
        assert_eq!(policy["thresholds"]["insult"]["review"].as_float(), Some(0.45));
        assert_eq!(policy["thresholds"]["insult"]["reject"].as_float(), Some(0.95));
        assert!(snippet.contains("precision 1.000 = 9/9 flagged"), "{snippet}");
        assert!(snippet.contains(r#"policy = "abuse.v1-tuned""#), "{snippet}");
    }

    #[test]
    fn the_version_follows_the_thresholds_only() {
        let a = tuning("a", Ok(proposal()));
        assert_eq!(a.version, tuning("b", Ok(proposal())).version);
        assert!(a.version.starts_with("tune-") && a.version.len() == 17, "{}", a.version);
        let mut other = proposal();
        other.thresholds.review = Some(0.46);
        assert_ne!(a.version, tuning("a", Ok(other)).version);
    }

    #[test]
    fn without_a_proposal_there_is_no_table_but_the_reason() {
        let t = tuning("x", Err(Refusal::TooFew { reviews: 40, min: 100 }));
        let snippet = toml(&t);
        assert!(!snippet.contains("[policies."), "{snippet}");
        assert!(snippet.contains("# Not proposed: insult: 40 labelled reviews of task abuse, fewer than the 100"));
        let json: serde_json::Value = serde_json::from_str(&json(&t)).unwrap();
        assert_eq!(json["complete"], false);
        assert_eq!(json["labels"][0]["proposed"], false);
        assert!(json["labels"][0]["reason"].as_str().unwrap().starts_with("insult: 40 labelled reviews"));
    }
}
