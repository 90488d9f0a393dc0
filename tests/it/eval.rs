//! `modserve eval` on a labelled fixture file: the figures of each shadow's report (decision
//! matrices, precision and recall against the labels) equal the ones computed here from the
//! golden scores, GO and NO-GO come from the `[launch]` criteria with their exit codes, and a
//! bad labelled file is refused naming the line.

use std::collections::HashMap;
use std::io::Write;

use crate::common::*;

fn write_config(dir: &tempfile::TempDir, launch: &str) -> std::path::PathBuf {
    write_config_with(
        dir,
        &format!(
            r#"
[tasks.abuse]
live = "tiny-abuse"
shadows = [
  {{ model = "tiny-abuse-v2", sample_rate = 0.5 }},
  {{ model = "tiny-abuse", policy = "strict-2", sample_rate = 0.1 }},
]
[launch]
{launch}
"#
        ),
    )
}

/// The two fixture models and the `strict-2` policy, then `tables`.
fn write_config_with(dir: &tempfile::TempDir, tables: &str) -> std::path::PathBuf {
    let path = dir.path().join("modserve.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    write!(
        f,
        r#"
[models.tiny-abuse]
path = {live:?}
[models.tiny-abuse-v2]
path = {v2:?}
[policies.strict-2]
version = "2"
[policies.strict-2.thresholds.insult]
review = 0.3
reject = 0.6
{tables}
"#,
        live = path_str(&fixture("tiny-abuse")),
        v2 = path_str(&fixture("tiny-abuse-v2")),
    )
    .unwrap();
    path
}

/// The expected matrices from golden.json and the fixture's labels: live x candidate, and each
/// model's decision x the label. Sampling rates do not matter offline: every review is scored.
struct Expected {
    comparisons: [[u64; 3]; 3],
    live: [[u64; 3]; 3],
    candidate: [[u64; 3]; 3],
}

fn expected(candidate: &str) -> Expected {
    let mut golden_by_text: HashMap<(String, String), Golden> = HashMap::new();
    for g in golden() {
        golden_by_text.insert((g.model.clone(), g.text.clone()), g);
    }
    let mut e = Expected { comparisons: [[0; 3]; 3], live: [[0; 3]; 3], candidate: [[0; 3]; 3] };
    let labelled = std::fs::read_to_string(fixture("labelled.jsonl")).unwrap();
    for line in labelled.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["text"].as_str().unwrap().to_string();
        let human = decision_index(v["decision"].as_str().unwrap());
        let live_golden = &golden_by_text[&("tiny-abuse".to_string(), text.clone())];
        let live = decision_index(&live_golden.decision);
        let cand = match candidate {
            "v2" => decision_index(&golden_by_text[&("tiny-abuse-v2".to_string(), text)].decision),
            _ => strict_2(&live_golden.probabilities),
        };
        e.comparisons[live][cand] += 1;
        e.live[live][human] += 1;
        e.candidate[cand][human] += 1;
    }
    e
}

fn matrix(v: &serde_json::Value) -> [[u64; 3]; 3] {
    let mut m = [[0; 3]; 3];
    for (i, row) in v.as_array().unwrap().iter().enumerate() {
        for (j, cell) in row.as_array().unwrap().iter().enumerate() {
            m[i][j] = cell.as_u64().unwrap();
        }
    }
    m
}

/// Precision and recall when flagging at `level` (decision >= level), from a model x human matrix.
fn precision_recall(m: &[[u64; 3]; 3], level: usize) -> (u64, u64, u64) {
    let (mut both, mut model, mut human) = (0, 0, 0);
    for (i, row) in m.iter().enumerate() {
        for (j, n) in row.iter().enumerate() {
            if i >= level && j >= level {
                both += n;
            }
            if i >= level {
                model += n;
            }
            if j >= level {
                human += n;
            }
        }
    }
    (both, model, human)
}

/// Runs `modserve eval` on the labelled fixture.
fn run_eval(config: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    run_eval_on(config, &fixture("labelled.jsonl"), out)
}

/// Runs `modserve eval` on the labelled file `labels`.
fn run_eval_on(config: &std::path::Path, labels: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    run_eval_args(config, labels, out, &[])
}

/// `run_eval_on` with more flags.
fn run_eval_args(
    config: &std::path::Path,
    labels: &std::path::Path,
    out: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    let mut command = modserve();
    command.args(["eval", "--config"]).arg(config).arg("--labels").arg(labels).args(args).arg("--out").arg(out);
    // A liveness bound, not a speed one: an eval that hangs fails its test instead of the suite.
    output_within(&mut command, std::time::Duration::from_secs(120))
}

fn report(out: &std::path::Path, dir: &str) -> serde_json::Value {
    let path = out.join(dir).join("launch-report.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn eval_reports_the_figures_computed_from_the_golden_scores() {
    let _shared = shared_blocking();
    let dir = tempfile::tempdir().unwrap();
    // Lenient criteria: both candidates pass on 12 reviews.
    let config = write_config(&dir, "min_compared = 10\nmin_verdicts = 10\nmax_precision_drop = 1.0");
    let out = dir.path().join("reports");
    let run = run_eval(&config, &out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    // 12 reviews on the live model and on tiny-abuse-v2; the policy-only shadow runs none.
    assert!(stderr.contains("24/24 reviews scored"), "progress: {stderr}");

    for (dir, which) in [("abuse-tiny-abuse-v2", "v2"), ("abuse-tiny-abuse-strict-2", "strict")] {
        let r = report(&out, dir);
        let e = expected(which);
        let input = &r["input"];
        assert_eq!(input["source"]["kind"], "offline");
        assert_eq!(input["source"]["reviews"], 12);
        assert_eq!(matrix(&input["comparisons"]), e.comparisons, "{dir}: live x candidate");
        assert_eq!(matrix(&input["verdicts"]["live"]), e.live, "{dir}: live x label");
        assert_eq!(matrix(&input["verdicts"]["candidate"]), e.candidate, "{dir}: candidate x label");
        for (side, m) in [("live", e.live), ("candidate", e.candidate)] {
            for (level, key) in [(1, "at_review"), (2, "at_reject")] {
                let (both, model, human) = precision_recall(&m, level);
                let pr = &r["derived"]["accuracy"][side][key];
                assert_eq!(pr["precision"]["hits"], both, "{dir} {side} {key}");
                assert_eq!(pr["precision"]["n"], model, "{dir} {side} {key}");
                assert_eq!(pr["recall"]["n"], human, "{dir} {side} {key}");
                if model > 0 {
                    let want = both as f64 / model as f64;
                    let got = pr["precision"]["value"].as_f64().unwrap();
                    assert!((got - want).abs() < 1e-12, "{dir} {side} {key}: precision {got} != {want}");
                }
            }
        }
        let agree: u64 = (0..3).map(|i| e.comparisons[i][i]).sum();
        assert_eq!(r["derived"]["agreement"]["agree"], agree);
        assert_eq!(r["decision"], "GO", "{dir}");
        assert_eq!(input["candidate"]["policy"], if which == "v2" { "default" } else { "strict-2" });
        for file in ["launch-report.md", "launch-report.html"] {
            assert!(out.join(dir).join(file).is_file(), "{dir}/{file}");
        }
    }
    assert!(stdout.contains("abuse-tiny-abuse-v2: GO"), "{stdout}");
}

/// The shadows are the work of an offline run, not guests of live traffic: with the shipped
/// shadow limits (a twentieth of the CPUs, and shadows only while half the CPUs are idle) and
/// every CPU busy, `modserve eval` still scores every review. Before, it waited for idle CPUs
/// that never came, for as long as the machine stayed busy.
#[test]
fn eval_scores_every_shadow_on_a_busy_machine_with_the_shipped_shadow_limits() {
    // Exclusive: its busy threads would slow every test beside it.
    let _guard = exclusive_blocking();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, "min_compared = 10\nmin_verdicts = 10\nmax_precision_drop = 1.0");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(!text.contains("[shadow]"), "the shipped defaults: {text}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..std::thread::available_parallelism().unwrap().get())
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let out = dir.path().join("reports");
    let run = run_eval(&config, &out);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    busy.into_iter().for_each(|t| t.join().unwrap());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "stdout: {}\nstderr: {stderr}", String::from_utf8_lossy(&run.stdout));
    assert!(stderr.contains("24/24 reviews scored"), "progress: {stderr}");
    let r = report(&out, "abuse-tiny-abuse-v2");
    assert_eq!(matrix(&r["input"]["comparisons"]), expected("v2").comparisons, "live x candidate");
}

#[test]
fn eval_says_no_go_with_exit_status_2_when_a_criterion_fails() {
    let _shared = shared_blocking();
    let dir = tempfile::tempdir().unwrap();
    // 12 labelled reviews cannot meet the default of 100 verdicts.
    let config = write_config(&dir, "min_compared = 10");
    let out = dir.path().join("reports");
    let run = run_eval(&config, &out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(2), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("NO-GO"), "{stdout}");
    let r = report(&out, "abuse-tiny-abuse-v2");
    assert_eq!(r["decision"], "NO-GO");
    assert!(
        r["failed"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().contains("verdicts")),
        "{}",
        r["failed"]
    );
}

#[test]
fn a_bad_labelled_file_is_refused_naming_each_line() {
    let _shared = shared_blocking();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, "");
    let labels = dir.path().join("labels.jsonl");
    std::fs::write(
        &labels,
        concat!(
            "{\"id\": \"a\", \"text\": \"ok\", \"task\": \"abuse\", \"decision\": \"allow\"}\n",
            "{\"id\": \"b\", \"text\": \"ok\", \"task\": \"spam\", \"decision\": \"allow\"}\n",
            "{\"id\": \"c\", \"text\": \"ok\", \"task\": \"abuse\", \"decision\": \"maybe\"}\n",
            "{\"id\": \"d\", \"text\": \"  \", \"task\": \"abuse\", \"decision\": \"allow\"}\n",
            "not json\n",
            "{\"id\": \"a\", \"text\": \"ok\", \"task\": \"abuse\", \"decision\": \"allow\"}\n",
        ),
    )
    .unwrap();
    let run = modserve().args(["eval", "--config"]).arg(&config).arg("--labels").arg(&labels).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    for (line, what) in [
        (2, "task: unknown task \"spam\""),
        (3, "decision: \"maybe\""),
        (4, "text: must not be empty"),
        (5, "not a labelled review"),
        (6, "id \"a\" appears twice"),
    ] {
        let at = format!("{}:{line}: {what}", labels.display());
        assert!(stderr.contains(&at), "line {line} ({what}): {stderr}");
    }
    assert!(!stderr.contains(&format!("{}:1:", labels.display())), "line 1 is fine: {stderr}");
}

#[test]
fn progress_counts_each_task_on_its_own_models() {
    let _shared = shared_blocking();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, "min_compared = 1");
    // Add a fraud task, live only: its reviews go through one model, abuse's through two.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[tasks.abuse]",
        &format!(
            "[models.tiny-fraud]\npath = {:?}\n[tasks.fraud]\nlive = \"tiny-fraud\"\n[tasks.abuse]",
            path_str(&fixture("tiny-fraud"))
        ),
    );
    std::fs::write(&config, text).unwrap();
    let labels = dir.path().join("labels.jsonl");
    let mut lines = std::fs::read_to_string(fixture("labelled.jsonl")).unwrap();
    for i in 0..5 {
        lines += &format!(
            "{{\"id\": \"f{i}\", \"text\": \"win a free prize now\", \"task\": \"fraud\", \"decision\": \"reject\"}}\n"
        );
    }
    std::fs::write(&labels, lines).unwrap();
    let run = modserve()
        .args(["eval", "--config"])
        .arg(&config)
        .arg("--labels")
        .arg(&labels)
        .arg("--out")
        .arg(dir.path().join("reports"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    // 12 abuse reviews on tiny-abuse and tiny-abuse-v2, 5 fraud reviews on tiny-fraud.
    assert!(stderr.contains("29/29 reviews scored"), "{stderr}");
    assert!(!stderr.contains("/29 reviews scored\n30"), "{stderr}");
}

/// The forecast the test expects from a decision matrix pair, scaled to `per_review` forecast
/// reviews per labelled one: (live, candidate) REVIEW items, overturned REJECTs and missed
/// abuse. Computed here from the golden scores, not by the report code.
struct QueueFigures {
    review: (f64, f64),
    overturned: (f64, f64),
    missed: (f64, f64),
}

fn queue_figures(e: &Expected, per_review: f64) -> QueueFigures {
    let live_decided = |d: usize| e.comparisons[d].iter().sum::<u64>() as f64 * per_review;
    let candidate_decided = |d: usize| (0..3).map(|l| e.comparisons[l][d]).sum::<u64>() as f64 * per_review;
    // Of the verdicts on a model's `decided` decisions, the share a moderator decided `wrong`.
    let share = |m: &[[u64; 3]; 3], decided: usize, wrong: &[usize]| {
        let row = m[decided];
        wrong.iter().map(|&h| row[h]).sum::<u64>() as f64 / row.iter().sum::<u64>() as f64
    };
    QueueFigures {
        review: (live_decided(1), candidate_decided(1)),
        overturned: (
            live_decided(2) * share(&e.live, 2, &[0, 1]),
            candidate_decided(2) * share(&e.candidate, 2, &[0, 1]),
        ),
        missed: (live_decided(0) * share(&e.live, 0, &[1, 2]), candidate_decided(0) * share(&e.candidate, 0, &[1, 2])),
    }
}

fn close(got: &serde_json::Value, want: f64, what: &str) {
    let got = got.as_f64().unwrap_or_else(|| panic!("{what}: {got} is not a number"));
    assert!((got - want).abs() < 1e-9 * want.abs().max(1.0), "{what}: {got} != {want}");
}

/// The report forecasts REVIEW items, overturned REJECTs and missed abuse per day from the
/// labelled file scaled to `launch.reviews_per_day`, and the cost model in `[launch]` turns a
/// candidate whose wrong REJECTs cost more than live's into NO-GO, and back to GO when a wrong
/// REJECT weighs nothing.
#[test]
fn eval_forecasts_queue_units_per_day_and_the_cost_model_flips_the_decision() {
    let _shared = shared_blocking();
    let dir = tempfile::tempdir().unwrap();
    let lenient = "min_compared = 10\nmin_verdicts = 10\nmax_precision_drop = 1.0\nreviews_per_day = 12000\n\
                   max_review_queue_increase = 0.0\n";
    let e = expected("v2");
    // 12 labelled reviews scaled to 12000 a day: each stands for 1000.
    let want = queue_figures(&e, 1000.0);
    // The fixture makes tiny-abuse-v2's REJECTs overturned more often than live's, and neither
    // misses abuse: so weighing wrong REJECTs makes it dearer, weighing only misses does not.
    assert!(want.overturned.1 > want.overturned.0, "fixture: {:?}", want.overturned);
    assert_eq!(want.missed, (0.0, 0.0), "fixture");

    let mut decisions = Vec::new();
    for (weights, name) in [
        ("cost_wrong_reject = 1.0\ncost_missed_abuse = 1.0", "costly"),
        ("cost_wrong_reject = 0.0\ncost_missed_abuse = 1.0", "misses"),
    ] {
        let config = write_config(&dir, &format!("{lenient}{weights}"));
        let out = dir.path().join(name);
        let run = run_eval(&config, &out);
        assert!(run.status.code().is_some_and(|c| c == 0 || c == 2), "{}", String::from_utf8_lossy(&run.stderr));
        let r = report(&out, "abuse-tiny-abuse-v2");
        let f = &r["forecast"];
        assert_eq!(f["unit"], "day");
        close(&f["volume"], 12_000.0, "volume");
        close(&f["review_queue"]["live"], want.review.0, "live REVIEW items");
        close(&f["review_queue"]["candidate"], want.review.1, "candidate REVIEW items");
        close(&f["overturned_rejects"]["live"]["value"], want.overturned.0, "live overturned REJECTs");
        close(&f["overturned_rejects"]["candidate"]["value"], want.overturned.1, "candidate overturned REJECTs");
        close(&f["missed_abuse"]["live"]["value"], want.missed.0, "live missed abuse");
        close(&f["missed_abuse"]["candidate"]["value"], want.missed.1, "candidate missed abuse");
        let result = |criterion: &str| {
            r["results"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == criterion)
                .cloned()
                .unwrap_or_else(|| panic!("{criterion}"))
        };
        // Both models send the same number of reviews to the queue: no increase.
        assert_eq!(want.review.0, want.review.1, "fixture");
        assert_eq!(result("REVIEW queue increase")["status"], "pass");
        assert_eq!(result("REVIEW queue increase")["measured"], "+0.0%");
        let markdown = std::fs::read_to_string(out.join("abuse-tiny-abuse-v2").join("launch-report.md")).unwrap();
        assert!(markdown.contains("## Forecast in queue units"), "{markdown}");
        assert!(markdown.contains(&format!("Overturned REJECTs per day | {:.1} [", want.overturned.0)), "{markdown}");
        decisions.push((result("expected cost")["status"].clone(), r["decision"].clone()));
    }
    assert_eq!(decisions[0], (serde_json::json!("fail"), serde_json::json!("NO-GO")), "wrong REJECTs weigh 1");
    assert_eq!(decisions[1], (serde_json::json!("pass"), serde_json::json!("GO")), "only misses weigh");
}

/// With surfaces, each labelled review is decided under its surface's live policy, and a shadow
/// kept to some surfaces is judged on their reviews only, as online.
#[test]
fn eval_decides_each_review_under_its_surfaces_policy_and_shadows_see_their_surfaces() {
    let _shared = shared_blocking();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(
        &dir,
        r#"
[policies.lenient]
version = "1"
[policies.lenient.thresholds.insult]
review = 0.8
reject = 0.95
[tasks.abuse]
live = "tiny-abuse"
shadows = [
  { model = "tiny-abuse-v2", sample_rate = 1.0 },
  { model = "tiny-abuse", policy = "lenient", sample_rate = 1.0, surfaces = ["kids"] },
]
[tasks.abuse.surfaces]
kids = "strict-2"
[launch]
min_compared = 1
min_verdicts = 1
max_precision_drop = 1.0
"#,
    );
    let (labels, lines) = labelled_every_other_on_kids(dir.path());
    let out = dir.path().join("reports");
    let run = run_eval_on(&config, &labels, &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{}\n{stderr}", String::from_utf8_lossy(&run.stdout));
    // 12 reviews on the live model and on tiny-abuse-v2 (every surface); the policy-only shadow none.
    assert!(stderr.contains("24/24 reviews scored"), "progress: {stderr}");

    // Expected from the golden scores: live under default, or strict-2 on kids.
    let golden: HashMap<(String, String), Golden> =
        golden().into_iter().map(|g| ((g.model.clone(), g.text.clone()), g)).collect();
    let lenient = |s: &[f32]| match s[0] {
        s if s >= 0.95 => 2,
        s if s >= 0.8 => 1,
        _ => 0,
    };
    let zero = || Expected { comparisons: [[0; 3]; 3], live: [[0; 3]; 3], candidate: [[0; 3]; 3] };
    let (mut v2, mut kids_only, mut v2_kids, mut on_kids) = (zero(), zero(), zero(), 0);
    for line in &lines {
        let text = line["text"].as_str().unwrap().to_string();
        let human = decision_index(line["decision"].as_str().unwrap());
        let live_golden = &golden[&("tiny-abuse".to_string(), text.clone())];
        let kids = line.get("surface").is_some();
        let live = if kids { strict_2(&live_golden.probabilities) } else { decision_index(&live_golden.decision) };
        let cand = decision_index(&golden[&("tiny-abuse-v2".to_string(), text.clone())].decision);
        v2.comparisons[live][cand] += 1;
        v2.live[live][human] += 1;
        v2.candidate[cand][human] += 1;
        if kids {
            on_kids += 1;
            let cand = lenient(&live_golden.probabilities);
            kids_only.comparisons[live][cand] += 1;
            kids_only.live[live][human] += 1;
            kids_only.candidate[cand][human] += 1;
            let v2_cand = decision_index(&golden[&("tiny-abuse-v2".to_string(), text.clone())].decision);
            v2_kids.comparisons[live][v2_cand] += 1;
            v2_kids.live[live][human] += 1;
            v2_kids.candidate[v2_cand][human] += 1;
        }
    }
    assert!(on_kids > 0 && kids_only.live != v2.live, "the fixture must tell the two apart");
    for (dir, e, reviews) in [("abuse-tiny-abuse-v2", &v2, 12), ("abuse-tiny-abuse-lenient", &kids_only, on_kids)] {
        let input = &report(&out, dir)["input"];
        assert_eq!(input["source"]["reviews"], reviews, "{dir}");
        assert_eq!(matrix(&input["comparisons"]), e.comparisons, "{dir}: live x candidate");
        assert_eq!(matrix(&input["verdicts"]["live"]), e.live, "{dir}: live x label");
        assert_eq!(matrix(&input["verdicts"]["candidate"]), e.candidate, "{dir}: candidate x label");
    }
    // `--surface kids`: the kids lines alone, for both shadows, with a note saying so.
    let kids_out = dir.path().join("kids-reports");
    let run = run_eval_args(&config, &labels, &kids_out, &["--surface", "kids"]);
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    for (dir, e) in [("abuse-tiny-abuse-v2", &v2_kids), ("abuse-tiny-abuse-lenient", &kids_only)] {
        let input = &report(&kids_out, dir)["input"];
        assert_eq!(input["source"]["reviews"], on_kids, "{dir}");
        assert_eq!(matrix(&input["comparisons"]), e.comparisons, "{dir} on kids: live x candidate");
        assert_eq!(matrix(&input["verdicts"]["live"]), e.live, "{dir} on kids: live x label");
        assert_eq!(matrix(&input["verdicts"]["candidate"]), e.candidate, "{dir} on kids: candidate x label");
        assert!(input["notes"].to_string().contains("surface kids only"), "{dir}: {}", input["notes"]);
    }
    let run = run_eval_args(&config, &labels, &kids_out, &["--surface", "forum"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--surface") && stderr.contains("\"forum\"") && stderr.contains("abuse/kids"), "{stderr}");

    // A surface the task does not list is refused, naming the line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, r#"{"id": "x1", "text": "hello", "task": "abuse", "decision": "allow", "surface": "forum"}"#)
        .unwrap();
    let run = run_eval_on(&config, &bad, &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_ne!(run.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("bad.jsonl:1: ") && stderr.contains("unknown surface"), "{stderr}");
}
