//! Fills a `ReportInput` from Prometheus.
//!
//! Counts are exact, not `increase()` estimates (which extrapolate): each counter series is read
//! as raw samples with a range selector (`metric{..}[window + lookback]` at `end`), and its count
//! in the window is the sum of the steps between consecutive samples, a drop being a counter
//! reset (a restart) whose new value counts in full. The last sample at or before the window's
//! start is the baseline; a series with none (born inside the window, e.g. on a new replica)
//! starts from 0. Series are then summed over replicas (`instance`, `job`) and the other labels
//! not asked for. Latency quantiles use `histogram_quantile` over `rate()`, whose extrapolation
//! scales every bucket alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::disagreements;
use super::error::ReportError;
use super::input::{
    DisagreementSummary, LabelledCell, OUTCOMES, Quantiles, ReportInput, SampleRates, Source, Subject, Verdicts,
};
use super::prometheus::{Access, Client, ClientError, Labels, Series, quote};
use crate::metrics::{
    BATCHES_TOTAL, INFERENCE_ERRORS_TOTAL, LABELLED_VERDICTS_TOTAL, Role, SHADOW_COMPARISONS_TOTAL,
    SHADOW_REVIEWS_TOTAL, SHADOW_SAMPLE_RATE_CONFIGURED, SHADOW_SAMPLE_RATE_EFFECTIVE, SHADOW_SCORE_DELTA,
    STAGE_DURATION_SECONDS, Stage, VERDICT_SCORES, VERDICTS_TOTAL, label,
};
use crate::policy::{Confusion, Decision};

/// How far before the window to look for each counter's baseline sample: more than any sane
/// scrape interval, so a series that existed before the window has one.
const BASELINE_LOOKBACK: Duration = Duration::from_secs(10 * 60);

/// What to fetch. `FetchArgs::new` fills the defaults.
#[derive(Debug, Clone)]
pub struct FetchArgs {
    /// `http[s]://host:port[/prefix]`.
    pub prometheus: String,
    /// TLS trust and credentials for `prometheus`.
    pub access: Access,
    pub task: String,
    /// The shadow model.
    pub candidate: String,
    /// The shadow policy; required when `candidate` is the live model (a policy-only shadow).
    pub policy: Option<String>,
    /// One named surface of the task: comparisons, verdicts and disagreements there only.
    pub surface: Option<String>,
    pub window: Duration,
    pub end: SystemTime,
    /// The disagreement log (rotated files `PATH.1`, `PATH.2`, ... are read too).
    pub disagreement_log: Option<PathBuf>,
    /// Time limit per query (connecting, TLS, sending, reading the answer).
    pub timeout: Duration,
}

impl FetchArgs {
    /// The last hour up to now, no credentials, no disagreement log, 10 s timeout.
    pub fn new(prometheus: &str, task: &str, candidate: &str) -> FetchArgs {
        FetchArgs {
            prometheus: prometheus.to_string(),
            access: Access::default(),
            task: task.to_string(),
            candidate: candidate.to_string(),
            policy: None,
            surface: None,
            window: Duration::from_secs(3600),
            end: SystemTime::now(),
            disagreement_log: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Reads every figure of a report for one candidate from Prometheus (and the disagreement log).
pub fn fetch(args: &FetchArgs) -> Result<ReportInput, ReportError> {
    let f = Fetcher::new(args)?;
    let mut notes = surface_notes(args);

    let Compared { live_model, policy, live, candidate, matrix } = compared(&f, args, &mut notes)?;

    let pair = [
        (label::TASK, args.task.as_str()),
        (label::LIVE_MODEL, live_model.as_str()),
        (label::SHADOW_MODEL, args.candidate.as_str()),
        (label::SHADOW_POLICY, policy.as_str()),
    ];
    let outcomes = outcomes(&f, &pair)?;

    let policy_only = args.candidate == live_model;
    let score_deltas = if policy_only { BTreeMap::new() } else { score_deltas(&f, &pair, &mut notes)? };

    let live_side = [(label::MODEL, live_model.as_str()), (label::ROLE, Role::Live.as_str())];
    let candidate_side = [(label::MODEL, args.candidate.as_str()), (label::ROLE, Role::Shadow.as_str())];
    let latency = super::input::Latency {
        live: f.quantiles(&live_model, Role::Live.as_str())?,
        candidate: if policy_only { None } else { f.quantiles(&args.candidate, Role::Shadow.as_str())? },
    };
    let (candidate_errors, candidate_batches) = if policy_only {
        (0, 0)
    } else {
        (f.total(INFERENCE_ERRORS_TOTAL, &candidate_side)?, f.total(BATCHES_TOTAL, &candidate_side)?)
    };

    let verdicts = verdicts(&f, args, &live_side, &candidate_side, &policy)?;
    let labelled = labelled(&f, args, &live_model, &policy, &mut notes)?;

    let end = args.end;
    let disagreements = disagreements(args, &policy)?;

    Ok(ReportInput {
        source: Source::Prometheus { url: args.prometheus.clone(), window: args.window, end },
        task: args.task.clone(),
        live,
        candidate,
        outcomes,
        comparisons: matrix,
        score_deltas,
        latency: Some(latency),
        live_errors: f.total(INFERENCE_ERRORS_TOTAL, &live_side)?,
        live_batches: f.total(BATCHES_TOTAL, &live_side)?,
        candidate_errors,
        candidate_batches,
        sample_rate: if policy_only { None } else { f.sample_rates(&pair)? },
        verdicts,
        labelled,
        disagreements,
        notes,
    })
}

/// Who is compared with whom (from the comparisons themselves) and how their decisions cross.
struct Compared {
    live_model: String,
    policy: String,
    live: Subject,
    candidate: Subject,
    matrix: Confusion<u64>,
}

fn compared(f: &Fetcher, args: &FetchArgs, notes: &mut Vec<String>) -> Result<Compared, ReportError> {
    let comparisons = comparisons(f, args)?;
    let policy = choose_policy(args, &comparisons)?;
    let live_model = choose_live_model(&comparisons, &policy, notes);
    let chosen: Vec<&Counted> = comparisons
        .iter()
        .filter(|c| {
            label(&c.labels, label::LIVE_MODEL) == live_model && label(&c.labels, label::SHADOW_POLICY) == policy
        })
        .collect();
    let mut subject = |prefix: &str, model: &str| Subject {
        model: model.to_string(),
        version: distinct(&chosen, &format!("{prefix}_version"), notes),
        policy: distinct(&chosen, &format!("{prefix}_policy"), notes),
        policy_version: distinct(&chosen, &format!("{prefix}_policy_version"), notes),
    };
    let live = subject("live", &live_model);
    let candidate = subject("shadow", &args.candidate);
    let matrix = comparison_matrix(&chosen, notes);

    Ok(Compared { live_model, policy, live, candidate, matrix })
}

/// Every comparison series of the task's candidate (and policy, if given) in the window; an
/// error saying what was looked for when there is none.
fn comparisons(f: &Fetcher, args: &FetchArgs) -> Result<Vec<Counted>, ReportError> {
    let mut matchers = vec![(label::TASK, args.task.as_str()), (label::SHADOW_MODEL, args.candidate.as_str())];
    if let Some(p) = &args.policy {
        matchers.push((label::SHADOW_POLICY, p));
    }
    if let Some(s) = &args.surface {
        matchers.push((label::SURFACE, s));
    }
    let comparisons = f.counts(SHADOW_COMPARISONS_TOTAL, &matchers)?;
    if comparisons.is_empty() {
        return Err(ReportError::NoComparisons {
            task: args.task.clone(),
            candidate: args.candidate.clone(),
            policy: args.policy.as_ref().map(|p| format!(" (policy {p})")).unwrap_or_default(),
            window: humantime::format_duration(args.window).to_string(),
            url: args.prometheus.clone(),
        });
    }
    Ok(comparisons)
}

/// Live decision x candidate decision over the chosen comparison series.
fn comparison_matrix(chosen: &[&Counted], notes: &mut Vec<String>) -> Confusion<u64> {
    let mut matrix = Confusion::<u64>::default();
    for c in chosen {
        match (decision(label(&c.labels, label::LIVE_DECISION)), decision(label(&c.labels, label::SHADOW_DECISION))) {
            (Some(l), Some(s)) => matrix[(l, s)] += c.count,
            _ => notes.push(format!("ignored comparisons with unknown decisions: {:?}", c.labels)),
        }
    }
    matrix
}

/// Reviews offered to the candidate, by outcome (every outcome present, 0 if none).
fn outcomes(f: &Fetcher, pair: &[(&str, &str)]) -> Result<BTreeMap<String, u64>, ReportError> {
    let mut outcomes: BTreeMap<String, u64> = OUTCOMES.iter().map(|o| (o.to_string(), 0)).collect();
    for c in f.counts(SHADOW_REVIEWS_TOTAL, pair)? {
        *outcomes.entry(label(&c.labels, label::OUTCOME).to_string()).or_default() += c.count;
    }
    Ok(outcomes)
}

/// Per label, the cumulative buckets of candidate minus live score, ascending `le`.
fn score_deltas(
    f: &Fetcher,
    pair: &[(&str, &str)],
    notes: &mut Vec<String>,
) -> Result<BTreeMap<String, Vec<(f64, u64)>>, ReportError> {
    let mut by_bucket: BTreeMap<(String, String), u64> = BTreeMap::new();
    for c in f.counts(&format!("{SHADOW_SCORE_DELTA}_bucket"), pair)? {
        let key = (label(&c.labels, label::LABEL).to_string(), label(&c.labels, "le").to_string());
        *by_bucket.entry(key).or_default() += c.count;
    }
    let mut score_deltas: BTreeMap<String, Vec<(f64, u64)>> = BTreeMap::new();
    for ((label, le), count) in by_bucket {
        match le.parse::<f64>() {
            Ok(le) => score_deltas.entry(label).or_default().push((le, count)),
            Err(_) => notes.push(format!("ignored a score-delta bucket with le={le:?}")),
        }
    }
    for buckets in score_deltas.values_mut() {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Ok(score_deltas)
}

/// Moderator verdicts on live and on the candidate (under `policy`); `None` when there are none.
fn verdicts(
    f: &Fetcher,
    args: &FetchArgs,
    live_side: &[(&str, &str); 2],
    candidate_side: &[(&str, &str); 2],
    policy: &str,
) -> Result<Option<Verdicts>, ReportError> {
    let mut live = vec![(label::TASK, args.task.as_str()), live_side[0], live_side[1]];
    let mut candidate =
        vec![(label::TASK, args.task.as_str()), candidate_side[0], candidate_side[1], (label::POLICY, policy)];
    if let Some(s) = &args.surface {
        live.push((label::SURFACE, s));
        candidate.push((label::SURFACE, s));
    }
    let live_verdicts = f.counts(VERDICTS_TOTAL, &live)?;
    let candidate_verdicts = f.counts(VERDICTS_TOTAL, &candidate)?;
    Ok((!live_verdicts.is_empty() || !candidate_verdicts.is_empty())
        .then(|| Verdicts { live: verdict_matrix(&live_verdicts), candidate: verdict_matrix(&candidate_verdicts) }))
}

/// Verdicts on the reviews the labelling queue picks for this pair, by inclusion probability
/// and the three decisions (summed over versions and replicas).
fn labelled(
    f: &Fetcher,
    args: &FetchArgs,
    live_model: &str,
    policy: &str,
    notes: &mut Vec<String>,
) -> Result<Vec<LabelledCell>, ReportError> {
    let matchers = [
        (label::TASK, args.task.as_str()),
        (label::LIVE_MODEL, live_model),
        (label::SHADOW_MODEL, args.candidate.as_str()),
        (label::SHADOW_POLICY, policy),
    ];
    let mut cells: BTreeMap<(u64, usize, usize, usize), u64> = BTreeMap::new();
    for c in f.counts(LABELLED_VERDICTS_TOTAL, &matchers)? {
        let p = label(&c.labels, label::INCLUSION_PROBABILITY).parse::<f64>().ok().filter(|p| *p > 0.0 && *p <= 1.0);
        let decisions = [label::LIVE_DECISION, label::SHADOW_DECISION, label::HUMAN_DECISION]
            .map(|key| decision(label(&c.labels, key)).map(Decision::index));
        match (p, decisions) {
            (Some(p), [Some(l), Some(s), Some(h)]) => *cells.entry((p.to_bits(), l, s, h)).or_default() += c.count,
            _ => notes.push(format!("ignored labelled verdicts with unknown labels: {:?}", c.labels)),
        }
    }
    Ok(cells
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|((p, live, candidate, human), count)| LabelledCell {
            inclusion_probability: f64::from_bits(p),
            live,
            candidate,
            human,
            count,
        })
        .collect())
}

/// The disagreement log's lines for this candidate in the window, when a log was given.
fn disagreements(args: &FetchArgs, policy: &str) -> Result<Option<DisagreementSummary>, ReportError> {
    let Some(path) = &args.disagreement_log else { return Ok(None) };
    let (end, start) = (args.end, args.end.checked_sub(args.window).unwrap_or(UNIX_EPOCH));
    let filter = disagreements::Filter {
        task: &args.task,
        model: &args.candidate,
        policy,
        surface: args.surface.as_deref(),
        start,
        end,
    };
    Ok(Some(disagreements::summarize(path, &filter)?))
}

/// What a report kept to one surface covers, said in its notes.
fn surface_notes(args: &FetchArgs) -> Vec<String> {
    match &args.surface {
        Some(s) => vec![format!(
            "surface {s} only: comparisons, verdicts and disagreements; shadow outcomes, score deltas and latency cover every surface"
        )],
        None => Vec::new(),
    }
}

/// A series and its exact count in the window.
#[derive(Debug)]
struct Counted {
    labels: Labels,
    count: u64,
}

struct Fetcher<'a> {
    client: Client,
    args: &'a FetchArgs,
    /// The window's start, in unix seconds: samples at or before it are baselines only.
    start: f64,
}

impl Fetcher<'_> {
    fn new(args: &FetchArgs) -> Result<Fetcher<'_>, ReportError> {
        let client = Client::new(&args.prometheus, args.timeout, &args.access).map_err(|e| match e {
            ClientError::Url(reason) => ReportError::BadUrl { url: args.prometheus.clone(), reason },
            ClientError::Access(error) => ReportError::Access(error),
        })?;
        Ok(Fetcher { client, args, start: unix(args.end) - args.window.as_secs_f64() })
    }

    /// Every series of counter `metric` matching `matchers` with a sample in the window, and
    /// its count there.
    fn counts(&self, metric: &str, matchers: &[(&str, &str)]) -> Result<Vec<Counted>, ReportError> {
        let range = promql_duration(self.args.window + BASELINE_LOOKBACK);
        let query = format!("{metric}{}[{range}]", selector(matchers));
        let series = self.client.query_matrix(&query, self.args.end).map_err(|error| self.error(&query, error))?;
        Ok(series
            .iter()
            .filter(|s| s.values.iter().any(|p| p.time > self.start))
            .map(|s| Counted { labels: s.metric.clone(), count: window_count(s, self.start) })
            .collect())
    }

    /// The count of `metric` matching `matchers`, summed over every series.
    fn total(&self, metric: &str, matchers: &[(&str, &str)]) -> Result<u64, ReportError> {
        Ok(self.counts(metric, matchers)?.iter().map(|c| c.count).sum())
    }

    /// p50 and p99 inference time per batch of `model` in `role`; `None` without batches.
    fn quantiles(&self, model: &str, role: &str) -> Result<Option<Quantiles>, ReportError> {
        let window = promql_duration(self.args.window);
        let matchers = [(label::STAGE, Stage::Inference.as_str()), (label::MODEL, model), (label::ROLE, role)];
        let q = |quantile: f64| -> Result<Option<f64>, ReportError> {
            let query = format!(
                "histogram_quantile({quantile}, sum by (le) (rate({STAGE_DURATION_SECONDS}_bucket{}[{window}])))",
                selector(&matchers)
            );
            let samples = self.client.query_vector(&query, self.args.end).map_err(|error| self.error(&query, error))?;
            Ok(samples.first().map(|s| s.value.value).filter(|v| v.is_finite()))
        };
        Ok(match (q(0.5)?, q(0.99)?) {
            (Some(p50), Some(p99)) => Some(Quantiles { p50, p99 }),
            _ => None,
        })
    }

    /// The configured rate and the effective rate's mean and minimum over the window; `None`
    /// when the server exported no rate gauges (older versions).
    fn sample_rates(&self, pair: &[(&str, &str)]) -> Result<Option<SampleRates>, ReportError> {
        let window = promql_duration(self.args.window);
        let q = |query: String| -> Result<Option<f64>, ReportError> {
            let samples = self.client.query_vector(&query, self.args.end).map_err(|error| self.error(&query, error))?;
            Ok(samples.first().map(|s| s.value.value).filter(|v| v.is_finite()))
        };
        let sel = selector(pair);
        let configured = q(format!("max(max_over_time({SHADOW_SAMPLE_RATE_CONFIGURED}{sel}[{window}]))"))?;
        let mean = q(format!("avg(avg_over_time({SHADOW_SAMPLE_RATE_EFFECTIVE}{sel}[{window}]))"))?;
        let min = q(format!("min(min_over_time({SHADOW_SAMPLE_RATE_EFFECTIVE}{sel}[{window}]))"))?;
        Ok(match (configured, mean, min) {
            (Some(configured), Some(effective_mean), Some(effective_min)) => {
                Some(SampleRates { configured, effective_mean, effective_min })
            }
            _ => None,
        })
    }

    fn error(&self, query: &str, error: super::prometheus::QueryError) -> ReportError {
        ReportError::Query { url: self.args.prometheus.clone(), query: query.to_string(), error }
    }
}

/// A live model's scores on reviews with a verdict, in the window: per label, how many verdicts
/// of each human decision (as it counts for that label) fell in each score bucket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerdictScores {
    /// label -> (bucket's lower edge, human decision, verdicts), lower edges ascending.
    by_label: BTreeMap<String, Vec<(f64, Decision, u64)>>,
}

impl VerdictScores {
    /// Builds it from cumulative bucket counts `(label, human, le, verdicts with score <= le)`,
    /// as a Prometheus histogram keeps them (several replicas' series may repeat a key: summed).
    pub fn from_cumulative(rows: impl IntoIterator<Item = (String, Decision, f64, u64)>) -> VerdictScores {
        let mut cumulative: BTreeMap<(String, Decision), Vec<(f64, u64)>> = BTreeMap::new();
        for (label, human, le, n) in rows {
            cumulative.entry((label, human)).or_default().push((le, n));
        }
        let mut by_label: BTreeMap<String, Vec<(f64, Decision, u64)>> = BTreeMap::new();
        for ((label, human), mut edges) in cumulative {
            edges.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (mut lower, mut below) = (0.0, 0);
            let buckets = by_label.entry(label).or_default();
            for chunk in edges.chunk_by(|a, b| a.0 == b.0) {
                let le = chunk[0].0;
                let at_or_below: u64 = chunk.iter().map(|(_, n)| n).sum();
                let n = at_or_below.saturating_sub(below);
                if n > 0 {
                    buckets.push((lower, human, n));
                }
                below = below.max(at_or_below);
                if le.is_finite() {
                    lower = le;
                }
            }
        }
        for buckets in by_label.values_mut() {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        }
        VerdictScores { by_label }
    }

    /// `label`'s buckets: (lower edge, human decision, verdicts), lower edges ascending. A score
    /// is in the bucket above its lower edge (`lower < score <= upper`; the first from 0).
    pub fn buckets(&self, label: &str) -> impl Iterator<Item = (f64, Decision, u64)> + '_ {
        self.by_label.get(label).into_iter().flatten().copied()
    }
}

/// The scores `model` at `version` (live) gave reviews with a verdict in the window, from
/// `modserve_verdict_scores`, on `args.surface` (or the default surface: series without one).
/// `args.candidate` is not read. Counts are exact per bucket series, as `fetch`'s, summed over
/// replicas.
pub fn verdict_scores(args: &FetchArgs, model: &str, version: &str) -> Result<VerdictScores, ReportError> {
    let f = Fetcher::new(args)?;
    let surface = args.surface.as_deref().unwrap_or("");
    let matchers = [
        (label::TASK, args.task.as_str()),
        (label::MODEL, model),
        (label::VERSION, version),
        (label::SURFACE, surface),
    ];
    let series = f.counts(&format!("{VERDICT_SCORES}_bucket"), &matchers)?;
    Ok(VerdictScores::from_cumulative(series.iter().filter_map(|c| {
        let human = decision(label(&c.labels, label::HUMAN_DECISION))?;
        let le = label(&c.labels, "le").parse::<f64>().ok()?;
        Some((label(&c.labels, label::LABEL).to_string(), human, le, c.count))
    })))
}

/// The count of one counter series in the window starting at `start` (unix seconds): the steps
/// between consecutive samples after the baseline, a drop counting its new value in full.
fn window_count(series: &Series, start: f64) -> u64 {
    let mut previous = None;
    let mut total = 0.0;
    for p in &series.values {
        if p.time > start {
            let base = previous.unwrap_or(0.0);
            total += if p.value >= base { p.value - base } else { p.value };
        }
        previous = Some(p.value);
    }
    total.round() as u64
}

/// The shadow policy to report on: the one asked for, or the only one seen.
fn choose_policy(args: &FetchArgs, comparisons: &[Counted]) -> Result<String, ReportError> {
    let seen: BTreeSet<&str> = comparisons.iter().map(|c| label(&c.labels, label::SHADOW_POLICY)).collect();
    let seen_text = || seen.iter().copied().collect::<Vec<_>>().join(", ");
    if let Some(p) = &args.policy {
        return Ok(p.clone());
    }
    if comparisons.iter().any(|c| label(&c.labels, label::LIVE_MODEL) == args.candidate) {
        return Err(ReportError::PolicyRequired {
            task: args.task.clone(),
            candidate: args.candidate.clone(),
            seen: seen_text(),
        });
    }
    match seen.len() {
        1 => Ok(seen.first().map(|p| p.to_string()).unwrap_or_default()),
        _ => Err(ReportError::AmbiguousPolicy {
            task: args.task.clone(),
            candidate: args.candidate.clone(),
            seen: seen_text(),
        }),
    }
}

/// The live model with the most comparisons under `policy`; others are left out, with a note.
fn choose_live_model(comparisons: &[Counted], policy: &str, notes: &mut Vec<String>) -> String {
    let mut by_model: BTreeMap<&str, u64> = BTreeMap::new();
    for c in comparisons.iter().filter(|c| label(&c.labels, label::SHADOW_POLICY) == policy) {
        *by_model.entry(label(&c.labels, label::LIVE_MODEL)).or_default() += c.count;
    }
    let live = by_model.iter().max_by_key(|(_, n)| **n).map(|(m, _)| m.to_string()).unwrap_or_default();
    for (model, n) in by_model.iter().filter(|(m, _)| **m != live) {
        notes.push(format!("the live model changed in the window: {n} comparisons against {model} are left out"));
    }
    live
}

/// The values of `key` among `series`, joined with ", " (with a note when there are several).
fn distinct(series: &[&Counted], key: &str, notes: &mut Vec<String>) -> String {
    let values: BTreeSet<&str> = series.iter().map(|c| label(&c.labels, key)).collect();
    let joined = values.iter().copied().collect::<Vec<_>>().join(", ");
    if values.len() > 1 {
        notes.push(format!("{key} changed within the window: {joined}"));
    }
    joined
}

fn verdict_matrix(series: &[Counted]) -> Confusion<u64> {
    let mut m = Confusion::default();
    for c in series {
        if let (Some(model), Some(human)) =
            (decision(label(&c.labels, label::MODEL_DECISION)), decision(label(&c.labels, label::HUMAN_DECISION)))
        {
            m[(model, human)] += c.count;
        }
    }
    m
}

fn decision(value: &str) -> Option<Decision> {
    Decision::from_name(value)
}

fn label<'a>(labels: &'a Labels, key: &str) -> &'a str {
    labels.get(key).map_or("", String::as_str)
}

/// `{a="x",b="y"}`.
fn selector(matchers: &[(&str, &str)]) -> String {
    let inner: Vec<String> = matchers.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
    format!("{{{}}}", inner.join(","))
}

/// A PromQL duration: whole seconds when exact, else milliseconds (at least 1ms).
fn promql_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis().max(1)) }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

#[cfg(test)]
mod tests;
