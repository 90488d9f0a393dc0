//! Launch criteria (the `[launch]` config table) and the GO / NO-GO decision they give.
//!
//! Each criterion passes or fails with the measured value and the limit. One whose limit is
//! unset is "not checked" (the criteria in queue units, from `forecast`, are then left out);
//! one that cannot be measured (no verdicts, no latency offline) fails when its limit is set.
//! GO needs every checked criterion to pass.

use std::time::Duration;

use serde::Serialize;

use super::derived::Derived;
use super::forecast::Forecast;
use super::format::{count, ms, pct_pair, points, signed_pct};
use super::input::{DECISIONS, REJECT, REVIEW, ReportInput};
pub use crate::config::{LaunchCriteria, RawLaunchCriteria, validate_criteria};

/// Slack for comparing derived floats with configured limits (0.87 - 0.85 > 0.02 in f64).
const EPSILON: f64 = 1e-9;

// === evaluation ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    /// The limit is unset.
    NotChecked,
    /// The limit is set but the comparison has no baseline (live's value is n/a).
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::NotChecked => "not checked",
            Status::Skipped => "skipped",
        }
    }
}

/// One criterion's outcome, with the words to show for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CriterionResult {
    /// Short name, e.g. "precision drop @REJECT".
    pub name: String,
    /// The limit as configured, e.g. "≤ 2.0 pp".
    pub limit: String,
    /// The measured value, e.g. "6.0 pp".
    pub measured: String,
    pub status: Status,
    /// A sentence saying what was compared.
    pub detail: String,
}

/// The launch decision: GO only if every checked criterion passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Decision {
    #[serde(rename = "GO")]
    Go,
    #[serde(rename = "NO-GO")]
    NoGo,
}

impl Decision {
    pub fn of(results: &[CriterionResult]) -> Decision {
        if results.iter().any(|r| r.status == Status::Fail) { Decision::NoGo } else { Decision::Go }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Go => "GO",
            Decision::NoGo => "NO-GO",
        }
    }
}

fn result(name: impl Into<String>, limit: String, measured: String, status: Status, detail: String) -> CriterionResult {
    CriterionResult { name: name.into(), limit, measured, status, detail }
}

fn not_checked(name: &str) -> CriterionResult {
    result(name, "-".into(), "-".into(), Status::NotChecked, "no limit set".into())
}

fn pass_if(ok: bool) -> Status {
    if ok { Status::Pass } else { Status::Fail }
}

/// Evaluates every criterion, in a fixed order.
pub fn evaluate(input: &ReportInput, derived: &Derived, criteria: &LaunchCriteria) -> Vec<CriterionResult> {
    let mut out = Vec::new();
    let compared = derived.agreement.total;
    let need = criteria.min_compared;
    out.push(min_criterion(
        "compared reviews",
        compared,
        need,
        format!("{compared} compared reviews (need {need})"),
        format!("{compared} compared reviews, need {need}"),
    ));
    let verdicts = derived.accuracy.map_or(0, |a| a.candidate.verdicts);
    let need = criteria.min_verdicts;
    out.push(min_criterion(
        "moderator verdicts",
        verdicts,
        need,
        format!("{verdicts} verdicts on the candidate (need {need})"),
        format!("{verdicts} verdicts, need {need}"),
    ));
    for (what, limit) in [("precision", criteria.max_precision_drop), ("recall", criteria.max_recall_drop)] {
        for level in [REVIEW, REJECT] {
            out.push(drop_criterion(derived, what, level, limit));
        }
    }
    out.push(p99_criterion(input, criteria.max_p99));
    let t = &derived.traffic;
    out.push(rate_criterion("error rate", t.errors, t.sampled, t.error_rate, criteria.max_error_rate));
    out.push(rate_criterion("shed rate", t.shed, t.sampled, t.shed_rate, criteria.max_shed_rate));
    // The criteria in queue units join the table only when set: a config without them gets
    // the same table it always had.
    let forecast = Forecast::of(input, derived, criteria);
    if let Some(limit) = criteria.max_review_queue_increase {
        out.push(queue_criterion(&forecast, limit));
    }
    if let Some(weights) = criteria.cost {
        out.push(cost_criterion(&forecast, weights));
    }
    out
}

/// At least `need` of something (0: not checked); the detail depends on the outcome.
fn min_criterion(name: &str, have: u64, need: u64, met: String, short: String) -> CriterionResult {
    if need == 0 {
        return not_checked(name);
    }
    let detail = if have >= need { met } else { short };
    result(name, format!("≥ {need}"), have.to_string(), pass_if(have >= need), detail)
}

/// Precision or recall at `level`: the candidate's point estimate may be at most `limit` below
/// live's.
fn drop_criterion(derived: &Derived, what: &str, level: usize, limit: Option<f64>) -> CriterionResult {
    let name = format!("{what} drop @{}", DECISIONS[level]);
    let Some(limit) = limit else { return not_checked(&name) };
    let limit_text = format!("≤ {}", points(limit));
    let metric = format!("{what}@{}", DECISIONS[level]);
    let Some(accuracy) = derived.accuracy.filter(|a| a.live.verdicts + a.candidate.verdicts > 0) else {
        let detail = format!("no moderator verdicts to measure {metric} against");
        return result(name, limit_text, "n/a".into(), Status::Fail, detail);
    };
    let pick = |m: &super::derived::ModelAccuracy| {
        let pr = m.at(level);
        if what == "precision" { pr.precision.value } else { pr.recall.value }
    };
    let (live, candidate) = (pick(&accuracy.live), pick(&accuracy.candidate));
    // Precision is over what the model flagged, recall over what the moderators flagged.
    let why = if what == "precision" { "it flagged no review at that level" } else { "moderators flagged none" };
    let Some(live) = live else {
        let detail = format!("live {metric} is n/a ({why}), so there is nothing to compare with");
        return result(name, limit_text, "n/a".into(), Status::Skipped, detail);
    };
    let Some(candidate) = candidate else {
        let detail = format!("candidate {metric} is n/a ({why}) while live's is {:.1}%", live * 100.0);
        return result(name, limit_text, "n/a".into(), Status::Fail, detail);
    };
    let drop = live - candidate;
    let (c, l) = pct_pair(candidate, live);
    let detail = if drop > 0.0 {
        format!("candidate {metric} {c} is {} below live's {l} (allowed {})", points(drop), points(limit))
    } else if drop < 0.0 {
        format!("candidate {metric} {c} is {} above live's {l}", points(-drop))
    } else {
        format!("candidate {metric} {c} equals live's")
    };
    result(name, limit_text, points(drop.max(0.0)), pass_if(drop <= limit + EPSILON), detail)
}

fn p99_criterion(input: &ReportInput, limit: Option<Duration>) -> CriterionResult {
    let name = "inference p99";
    let Some(limit) = limit else { return not_checked(name) };
    let limit_s = limit.as_secs_f64();
    let limit_text = format!("≤ {}", ms(Some(limit_s)));
    let policy_only = input.policy_only();
    let measured = match input.latency {
        None => Err("no latency measured (offline evaluation)".to_string()),
        Some(l) if policy_only => l.live.ok_or_else(|| "no live inference batches in the window".to_string()),
        Some(l) => l.candidate.ok_or_else(|| "no candidate inference batches in the window".to_string()),
    };
    match measured {
        Err(why) => result(name, limit_text, "n/a".into(), Status::Fail, why),
        Ok(q) => {
            let who = if policy_only { "policy-only candidate runs the live model: live" } else { "candidate" };
            let detail = format!("{who} p99 {} per batch (limit {})", ms(Some(q.p99)), ms(Some(limit_s)));
            result(name, limit_text, ms(Some(q.p99)), pass_if(q.p99 <= limit_s + EPSILON), detail)
        }
    }
}

fn rate_criterion(name: &str, hits: u64, sampled: u64, rate: Option<f64>, limit: Option<f64>) -> CriterionResult {
    let Some(limit) = limit else { return not_checked(name) };
    let Some(rate) = rate else {
        let detail = "no sampled reviews in the window to measure it over".to_string();
        return result(name, format!("≤ {:.1}%", limit * 100.0), "n/a".into(), Status::Fail, detail);
    };
    let (r, l) = pct_pair(rate, limit);
    let detail = format!("{hits} of {sampled} sampled reviews ({r}; limit {l})");
    result(name, format!("≤ {l}"), r, pass_if(rate <= limit + EPSILON), detail)
}

/// The candidate's forecast REVIEW queue items per unit may exceed live's by at most `limit`
/// (a share of live's).
fn queue_criterion(forecast: &Forecast, limit: f64) -> CriterionResult {
    let name = "REVIEW queue increase";
    let limit_text = format!("≤ {:+.1}%", limit * 100.0);
    let Some(q) = forecast.review_queue else {
        let detail = "no compared reviews to forecast the REVIEW queue from".to_string();
        return result(name, limit_text, "n/a".into(), Status::Fail, detail);
    };
    let per = forecast.unit.as_str();
    let items = format!(
        "candidate {} REVIEW items per {per} against live's {} ({:+.1})",
        count(q.candidate),
        count(q.live),
        q.change
    );
    match q.change_share {
        Some(share) => {
            let detail = format!("{items}: {} (allowed {:+.1}%)", signed_pct(share), limit * 100.0);
            result(name, limit_text, signed_pct(share), pass_if(share <= limit + EPSILON), detail)
        }
        // Live sends none: any REVIEW item is an unbounded increase.
        None => {
            let detail = format!("{items}: live sends no review to the queue");
            let measured = if q.candidate > 0.0 { "+∞".to_string() } else { "+0.0%".to_string() };
            result(name, limit_text, measured, pass_if(q.candidate <= 0.0), detail)
        }
    }
}

/// The candidate's expected cost per unit (weighted wrong REJECTs and missed abuse) may not
/// exceed live's.
fn cost_criterion(forecast: &Forecast, w: crate::config::CostWeights) -> CriterionResult {
    let name = "expected cost";
    let per = forecast.unit.as_str();
    let limit_text = "≤ live's".to_string();
    let Some((live, candidate)) = forecast.cost(w.wrong_reject, w.missed_abuse) else {
        let (o, m) = (&forecast.overturned_rejects, &forecast.missed_abuse);
        let weighed = [(w.wrong_reject, &o.live), (w.wrong_reject, &o.candidate)]
            .into_iter()
            .chain([(w.missed_abuse, &m.live), (w.missed_abuse, &m.candidate)]);
        let why = weighed
            .filter(|(weight, _)| *weight != 0.0)
            .find_map(|(_, e)| e.missing.clone())
            .unwrap_or_else(|| "no forecast".to_string());
        return result(name, limit_text, "n/a".into(), Status::Fail, format!("cannot forecast the cost: {why}"));
    };
    let side = |o: f64, m: f64| {
        format!("{} × {} wrong REJECTs + {} × {} missed abuse", w.wrong_reject, count(o), w.missed_abuse, count(m))
    };
    let value = |e: &super::forecast::Expected| e.value.unwrap_or(0.0);
    let detail = format!(
        "per {per}: candidate {} = {}, live {} = {}",
        side(value(&forecast.overturned_rejects.candidate), value(&forecast.missed_abuse.candidate)),
        count(candidate),
        side(value(&forecast.overturned_rejects.live), value(&forecast.missed_abuse.live)),
        count(live)
    );
    let ok = candidate <= live + EPSILON * live.abs().max(1.0);
    result(name, limit_text, format!("{} vs {}", count(candidate), count(live)), pass_if(ok), detail)
}

#[cfg(test)]
mod tests;
