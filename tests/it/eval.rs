//! `modserve eval` on a labelled fixture file: the figures of each shadow's report (decision
//! matrices, precision and recall against the labels) equal the ones computed here from the
//! golden scores, GO and NO-GO come from the `[launch]` criteria with their exit codes, and a
//! bad labelled file is refused naming the line.

use std::collections::HashMap;
use std::io::Write;
use std::process::Command;

use crate::common::*;

fn modserve() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modserve"));
    cmd.env("MODSERVE_ONNXRUNTIME_LIB", ort_lib()).env_remove("RUST_LOG");
    cmd
}

fn write_config(dir: &tempfile::TempDir, launch: &str) -> std::path::PathBuf {
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
[tasks.abuse]
live = "tiny-abuse"
shadows = [
  {{ model = "tiny-abuse-v2", sample_rate = 0.5 }},
  {{ model = "tiny-abuse", policy = "strict-2", sample_rate = 0.1 }},
]
[launch]
{launch}
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
    modserve()
        .args(["eval", "--config"])
        .arg(config)
        .arg("--labels")
        .arg(fixture("labelled.jsonl"))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
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
