//! What the report says, independent of format: a title, a preamble and the sections in order,
//! each a list of blocks. Text here is raw (unescaped); `markdown` and `html` escape it as they
//! render. Every section is present; one without data says why.

use super::Report;
use super::criteria::Status;
use super::derived::ModelAccuracy;
use super::forecast::{Expected, Unit};
use super::format::{bucket, count, estimate, ms, pct, score, signed_pct, weighted_estimate};
use super::input::{DECISIONS, OUTCOMES, REJECT, REVIEW, Source, Subject};
use super::stats::ratio;
use super::weighted::WeightedModelAccuracy;
use crate::metrics::ShadowOutcome;

pub struct Content {
    pub title: String,
    pub preamble: Vec<Block>,
    pub sections: Vec<Section>,
}

pub struct Section {
    pub title: &'static str,
    pub blocks: Vec<Block>,
}

pub enum Block {
    Text(String),
    Bullets(Vec<String>),
    /// A sub-heading within a section.
    Heading(String),
    Table(Table),
    /// A plot, drawn by the HTML renderer only.
    Chart(Chart),
}

pub struct Table {
    pub header: Vec<&'static str>,
    /// One letter per column: `l` left-aligned (text), `r` right-aligned (numbers).
    pub align: &'static str,
    pub rows: Vec<Vec<String>>,
    /// Cells shown emphasised: (row, column).
    pub strong: Vec<(usize, usize)>,
}

#[derive(Clone, Copy)]
pub enum Chart {
    Confusion,
    /// The score-delta distribution of the label with this name (an index into
    /// `Derived::score_deltas` in key order).
    ScoreDeltas(usize),
    Accuracy,
}

fn table(header: &[&'static str], align: &'static str, rows: Vec<Vec<String>>) -> Block {
    debug_assert_eq!(header.len(), align.len());
    Block::Table(Table { header: header.to_vec(), align, rows, strong: Vec::new() })
}

impl Table {
    /// Whether column `i` holds numbers (right-aligned).
    pub fn numeric(&self, i: usize) -> bool {
        self.align.as_bytes().get(i) == Some(&b'r')
    }
}

/// "strict@3": policy name and version.
pub fn policy(s: &Subject) -> String {
    format!("{}@{}", s.policy, s.policy_version)
}

/// One line saying where the numbers come from.
pub fn source_line(source: &Source) -> String {
    match source {
        Source::Prometheus { url, window, end } => format!(
            "Prometheus at {url}, the {} up to {}",
            humantime::format_duration(*window),
            humantime::format_rfc3339_seconds(*end)
        ),
        Source::Offline { labels_file, reviews } => {
            format!("offline evaluation of {reviews} labelled reviews from {}", labels_file.display())
        }
    }
}

pub fn build(r: &Report) -> Content {
    let i = &r.input;
    let title = format!(
        "Launch readiness: {} ({}) vs live {}, task {}",
        i.candidate.model,
        policy(&i.candidate),
        i.live.model,
        i.task
    );
    let subject = |who: &str, s: &Subject| vec![who.to_string(), s.model.clone(), s.version.clone(), policy(s)];
    let mut preamble = vec![
        Block::Bullets(vec![
            format!("Source: {}", source_line(&i.source)),
            format!("Generated: {}", humantime::format_rfc3339_seconds(r.generated_at)),
        ]),
        table(
            &["", "Model", "Version", "Policy"],
            "llll",
            vec![subject("Live", &i.live), subject("Candidate", &i.candidate)],
        ),
    ];
    if i.policy_only() {
        preamble.push(Block::Text("The candidate is policy-only: the live model with other thresholds.".into()));
    }
    if !i.notes.is_empty() {
        preamble.push(Block::Bullets(i.notes.iter().map(|n| format!("Note: {n}")).collect()));
    }
    let sections = vec![
        Section { title: "Traffic compared and coverage", blocks: traffic(r) },
        Section { title: "Agreement", blocks: agreement(r) },
        Section { title: "Decision confusion matrix", blocks: confusion(r) },
        Section { title: "Score deltas", blocks: score_deltas(r) },
        Section { title: "Latency", blocks: latency(r) },
        Section { title: "Errors and shed work", blocks: errors(r) },
        Section { title: "Precision and recall against moderator verdicts", blocks: accuracy(r) },
        Section { title: "Precision and recall from the labelling queue (weighted)", blocks: weighted(r) },
        Section { title: "Disagreement log", blocks: disagreements(r) },
        Section { title: "Forecast in queue units", blocks: forecast(r) },
        Section { title: "Launch criteria", blocks: criteria(r) },
    ];
    Content { title, preamble, sections }
}

fn traffic(r: &Report) -> Vec<Block> {
    let t = &r.derived.traffic;
    if t.offered == 0 {
        return vec![Block::Text("No reviews were offered to the candidate in the window.".into())];
    }
    let rows = OUTCOMES
        .iter()
        .filter(|o| **o != ShadowOutcome::SampledOut.as_str())
        .map(|o| {
            let n = r.input.outcome(o);
            vec![o.to_string(), n.to_string(), pct(ratio(n, t.sampled))]
        })
        .collect();
    vec![
        table(&["Outcome", "Reviews", "Share of sampled"], "lrr", rows),
        Block::Bullets(vec![
            format!(
                "Offered: {}; sampled out by design: {} ({} of offered); sampled: {}",
                t.offered,
                t.sampled_out,
                pct(t.sampled_out_share),
                t.sampled
            ),
            format!("Coverage (compared / sampled): {}", pct(t.coverage)),
            match &r.input.sample_rate {
                Some(s) => format!(
                    "Effective sample rate: mean {} over the window, lowest {}, configured {} \
                     (reviews between them are counted as throttled: left out uniformly by the \
                     review-id hash, not shed)",
                    pct(Some(s.effective_mean)),
                    pct(Some(s.effective_min)),
                    pct(Some(s.configured))
                ),
                None => "Effective sample rate: not measured".to_string(),
            },
            format!("Shed rate: {}", pct(t.shed_rate)),
            format!("Error rate: {}", pct(t.error_rate)),
        ]),
    ]
}

fn agreement(r: &Report) -> Vec<Block> {
    let a = &r.derived.agreement;
    if a.total == 0 {
        return vec![Block::Text("No compared reviews in the window.".into())];
    }
    vec![table(
        &["", "Reviews", "Share"],
        "lrr",
        vec![
            vec!["Agree".into(), a.agree.to_string(), pct(a.agreement_rate)],
            vec!["Candidate stricter".into(), a.stricter.to_string(), pct(a.stricter_rate)],
            vec!["Candidate more lenient".into(), a.more_lenient.to_string(), pct(a.more_lenient_rate)],
            vec!["Total".into(), a.total.to_string(), "100.0%".into()],
        ],
    )]
}

fn confusion(r: &Report) -> Vec<Block> {
    let m = &r.input.comparisons;
    let mut rows: Vec<Vec<String>> = (0..3)
        .map(|l| {
            let mut row = vec![DECISIONS[l].to_string()];
            row.extend(m[l].iter().map(u64::to_string));
            row.push(m[l].iter().sum::<u64>().to_string());
            row
        })
        .collect();
    let mut total = vec!["Total".to_string()];
    total.extend((0..3).map(|c| (0..3).map(|l| m[l][c]).sum::<u64>().to_string()));
    total.push(r.derived.agreement.total.to_string());
    rows.push(total);
    vec![
        Block::Text("Rows: live decision; columns: candidate decision.".into()),
        Block::Table(Table {
            header: [&["live \\ candidate"][..], &DECISIONS, &["Total"]].concat(),
            align: "lrrrr",
            rows,
            strong: vec![(0, 0), (1, 0), (2, 0)],
        }),
        Block::Chart(Chart::Confusion),
    ]
}

fn score_deltas(r: &Report) -> Vec<Block> {
    if r.input.policy_only() {
        return vec![Block::Text(
            "No score deltas: a policy-only candidate runs the live model, so its scores are live's.".into(),
        )];
    }
    if r.derived.score_deltas.is_empty() {
        return vec![Block::Text(
            "No score deltas recorded (no label shared by both models, or no comparisons).".into(),
        )];
    }
    let mut blocks = vec![Block::Text("Candidate score minus live score per compared review, by label.".into())];
    for (index, (label, d)) in r.derived.score_deltas.iter().enumerate() {
        blocks.push(Block::Heading(label.clone()));
        if d.total == 0 {
            blocks.push(Block::Text("No deltas recorded.".into()));
            continue;
        }
        let rows = d
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mark = if d.median_bucket == Some(i) { " (median)" } else { "" };
                vec![format!("{}{mark}", bucket(b)), b.count.to_string(), pct(ratio(b.count, d.total))]
            })
            .collect();
        blocks.push(Block::Chart(Chart::ScoreDeltas(index)));
        blocks.push(table(&["Delta", "Reviews", "Share"], "lrr", rows));
    }
    blocks
}

fn latency(r: &Report) -> Vec<Block> {
    let Some(l) = r.input.latency else {
        return vec![Block::Text("No latency offline: the evaluation does not time inference.".into())];
    };
    let i = &r.input;
    let live = vec!["Live".into(), ms(l.live.map(|q| q.p50)), ms(l.live.map(|q| q.p99)), i.live_batches.to_string()];
    let candidate = if i.policy_only() {
        vec!["Candidate".into(), "policy-only: runs no inference".into(), "-".into(), "-".into()]
    } else {
        let c = l.candidate;
        vec!["Candidate".into(), ms(c.map(|q| q.p50)), ms(c.map(|q| q.p99)), i.candidate_batches.to_string()]
    };
    vec![
        Block::Text("Inference time per batch.".into()),
        table(&["", "p50", "p99", "Batches"], "lrrr", vec![live, candidate]),
    ]
}

fn errors(r: &Report) -> Vec<Block> {
    let i = &r.input;
    let row = |who: &str, errors: u64, batches: u64| {
        vec![who.to_string(), errors.to_string(), batches.to_string(), pct(ratio(errors, batches))]
    };
    let mut rows = vec![row("Live", i.live_errors, i.live_batches)];
    if !i.policy_only() {
        rows.push(row("Candidate", i.candidate_errors, i.candidate_batches));
    }
    let t = &r.derived.traffic;
    vec![
        table(&["Inference", "Failed batches", "Batches", "Failure rate"], "lrrr", rows),
        Block::Text(format!(
            "Of {} sampled reviews, the candidate shed {} ({}: queue_full {}, live_pressure {}, deadline {}, \
             breaker_open {}) and failed on {} ({}).",
            t.sampled,
            t.shed,
            pct(t.shed_rate),
            i.outcome("queue_full"),
            i.outcome("live_pressure"),
            i.outcome("deadline"),
            i.outcome("breaker_open"),
            t.errors,
            pct(t.error_rate)
        )),
    ]
}

fn accuracy(r: &Report) -> Vec<Block> {
    let Some(a) = r.derived.accuracy else {
        return vec![Block::Text("No moderator verdicts in the window, so precision and recall are unknown.".into())];
    };
    let mut rows = Vec::new();
    for level in [REVIEW, REJECT] {
        for what in ["precision", "recall"] {
            let pick = |m: &ModelAccuracy| {
                let pr = m.at(level);
                if what == "precision" { pr.precision } else { pr.recall }
            };
            let (l, c) = (pick(&a.live), pick(&a.candidate));
            let name = format!("{what}@{}", DECISIONS[level]);
            rows.push(vec![name, estimate(&l), l.n.to_string(), estimate(&c), c.n.to_string()]);
        }
    }
    vec![
        Block::Text(format!(
            "Verdicts: live {}, candidate {}. Flagged at a level means a decision at or above it; 95% Wilson \
             intervals in brackets; n is the count each share is over.",
            a.live.verdicts, a.candidate.verdicts
        )),
        table(&["", "Live", "n", "Candidate", "n"], "lrrrr", rows),
        Block::Chart(Chart::Accuracy),
    ]
}

fn weighted(r: &Report) -> Vec<Block> {
    let Some(w) = r.derived.weighted else {
        return vec![Block::Text(
            "No verdicts on reviews the labelling queue picks for this candidate (see [labelling] in the config)."
                .into(),
        )];
    };
    let mut rows = Vec::new();
    for level in [REVIEW, REJECT] {
        for what in ["precision", "recall"] {
            let pick = |m: &WeightedModelAccuracy| {
                let pr = m.at(level);
                if what == "precision" { pr.precision } else { pr.recall }
            };
            let (l, c) = (pick(&w.live), pick(&w.candidate));
            let name = format!("{what}@{}", DECISIONS[level]);
            rows.push(vec![
                name,
                weighted_estimate(&l),
                format!("{} ({:.1})", l.n, l.effective_n),
                estimate(&l.unweighted),
                weighted_estimate(&c),
                format!("{} ({:.1})", c.n, c.effective_n),
                estimate(&c.unweighted),
            ]);
        }
    }
    vec![
        Block::Text(format!(
            "Verdicts on reviews the labelling queue picked: {}, of which {} where live and the candidate disagree. \
             Each counts 1 / its inclusion probability, so the figures stand for all compared traffic; 95% Wilson \
             intervals at Kish's effective sample size (in brackets after n). The unweighted columns count each \
             verdict once: the sample's own mix, which over-represents disagreements.",
            w.verdicts, w.disagreements
        )),
        table(
            &[
                "",
                "Live (weighted)",
                "n (n_eff)",
                "Live (unweighted)",
                "Candidate (weighted)",
                "n (n_eff)",
                "Candidate (unweighted)",
            ],
            "lrrrrrr",
            rows,
        ),
    ]
}

fn disagreements(r: &Report) -> Vec<Block> {
    let Some(d) = &r.input.disagreements else {
        return vec![Block::Text("No disagreement log read (pass --disagreement-log).".into())];
    };
    let files: Vec<String> = d.files.iter().map(|f| f.display().to_string()).collect();
    let directions: Vec<String> = d.by_direction.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let mut blocks = vec![Block::Text(format!(
        "{} matching lines in {}; by direction: {}; {} unparseable lines skipped.",
        d.matched,
        if files.is_empty() { "no file".to_string() } else { files.join(", ") },
        if directions.is_empty() { "none".to_string() } else { directions.join(", ") },
        d.unparseable
    ))];
    if !d.top.is_empty() {
        let rows = d
            .top
            .iter()
            .map(|x| {
                let at = |scores: &std::collections::BTreeMap<String, f64>| {
                    scores.get(&x.label).map_or("-".to_string(), |v| score(*v))
                };
                vec![
                    x.review_id.clone(),
                    x.direction.clone(),
                    format!("{} → {}", x.live_decision, x.candidate_decision),
                    format!("{} {} → {} ({:+.3})", x.label, at(&x.live_scores), at(&x.candidate_scores), x.delta),
                    x.text.clone().unwrap_or_default(),
                ]
            })
            .collect();
        blocks.push(Block::Text("Largest score differences:".into()));
        blocks.push(table(&["Review", "Direction", "Live → candidate", "Largest difference", "Text"], "lllll", rows));
    }
    blocks
}

fn forecast(r: &Report) -> Vec<Block> {
    let f = &r.forecast;
    let (Some(volume), Some(q)) = (f.volume, f.review_queue) else {
        return vec![Block::Text("No compared reviews, so there is nothing to forecast from.".into())];
    };
    let per = f.unit.as_str();
    let scale = match (&r.input.source, f.unit) {
        (Source::Prometheus { .. }, _) => format!(
            "{} reviews per day (the compared reviews scaled by the reviews offered to the candidate per \
             compared one, over the window)",
            count(volume)
        ),
        (Source::Offline { .. }, Unit::Day) => {
            format!("{} reviews per day (launch.reviews_per_day), in the labelled file's mix", count(volume))
        }
        (Source::Offline { .. }, Unit::ThousandReviews) => {
            "1000 reviews in the labelled file's mix (figures per 1000 reviews: set launch.reviews_per_day for \
             figures per day)"
                .to_string()
        }
    };
    let expected = |e: &Expected| match (e.value, e.range, &e.missing) {
        (Some(v), Some((lo, hi)), _) => format!("{} [{}, {}]", count(v), count(lo), count(hi)),
        (_, _, Some(why)) => format!("n/a: {why}"),
        _ => "n/a".to_string(),
    };
    let change = |l: &Expected, c: &Expected| match (l.value, c.value) {
        (Some(l), Some(c)) => format!("{:+.1}", c - l),
        _ => "n/a".to_string(),
    };
    let (o, m) = (&f.overturned_rejects, &f.missed_abuse);
    let queue_change = match q.change_share {
        Some(s) => format!("{:+.1} ({})", q.change, signed_pct(s)),
        None => format!("{:+.1}", q.change),
    };
    let rows = vec![
        vec![format!("REVIEW queue items per {per}"), count(q.live), count(q.candidate), queue_change],
        vec![
            format!("Overturned REJECTs per {per}"),
            expected(&o.live),
            expected(&o.candidate),
            change(&o.live, &o.candidate),
        ],
        vec![
            format!("Missed abuse per {per}"),
            expected(&m.live),
            expected(&m.candidate),
            change(&m.live, &m.candidate),
        ],
    ];
    let share = |e: &Expected| format!("{} of {}", e.share.hits, e.share.n);
    vec![
        Block::Text(format!(
            "What each model would do to {scale}. Only REVIEW decisions go to the moderators' queue. A REJECT \
             is overturned when a moderator decided ALLOW or REVIEW; abuse is missed when the model allowed what a \
             moderator decided REVIEW or REJECT. Both are the model's decisions of that kind times the share of \
             its verdicts on them that went the other way, 95% range in brackets.",
        )),
        table(&["", "Live", "Candidate", "Change"], "lrrr", rows),
        Block::Bullets(vec![
            format!("Overturned REJECT verdicts: live {}, candidate {}", share(&o.live), share(&o.candidate)),
            format!("Missed abuse verdicts (on ALLOWs): live {}, candidate {}", share(&m.live), share(&m.candidate)),
        ]),
    ]
}

fn criteria(r: &Report) -> Vec<Block> {
    let mut strong = Vec::new();
    let rows = r
        .results
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if matches!(c.status, Status::Pass | Status::Fail) {
                strong.push((i, 3));
            }
            vec![c.name.clone(), c.limit.clone(), c.measured.clone(), c.status.as_str().to_string(), c.detail.clone()]
        })
        .collect();
    vec![Block::Table(Table {
        header: vec!["Criterion", "Limit", "Measured", "Result", "Detail"],
        align: "lrrll",
        rows,
        strong,
    })]
}
