//! `modserve report` against a real Prometheus (the Debian package) that scraped a run with a
//! known mix: live answers, a model shadow and a policy-only shadow on golden texts, and
//! moderator verdicts. Every count in the report equals the mix, computed here from the golden
//! scores; GO and NO-GO come out with exit codes 0 and 2; the HTML page opens in headless
//! Chromium (the Debian package) without errors, and a screenshot is taken. The server runs in a
//! process of its own (`ChildServer`): the counts are its alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::prometheus::Prometheus;
use crate::common::*;
use modserve::serving::grpc::pb;
use modserve::serving::grpc::pb::feedback_client::FeedbackClient;

/// The models and policies, with `{log}` for the disagreement log path.
const MODELS: &str = r#"
[models.tiny-abuse]
path = "{live}"
[models.tiny-abuse-v2]
path = "{v2}"
[policies.strict-2]
version = "2"
[policies.strict-2.thresholds.insult]
review = 0.3
reject = 0.6
[shadow.disagreement_log]
path = "{log}"
[tasks.abuse]
live = "tiny-abuse"
shadows = [
  { model = "tiny-abuse-v2", sample_rate = 1.0 },
  { model = "tiny-abuse", policy = "strict-2", sample_rate = 1.0 },
]
"#;

fn models(log: &Path) -> String {
    MODELS
        .replace("{live}", &path_str(&fixture("tiny-abuse")))
        .replace("{v2}", &path_str(&fixture("tiny-abuse-v2")))
        .replace("{log}", &path_str(log))
}

const HUMAN: [pb::Decision; 3] = [pb::Decision::Allow, pb::Decision::Review, pb::Decision::Reject];

/// The known mix, as each decider saw it.
#[derive(Default)]
struct Mix {
    /// [live][candidate] per candidate ("v2", "strict").
    comparisons: HashMap<&'static str, [[u64; 3]; 3]>,
    /// [model][human] per decider ("live", "v2", "strict").
    verdicts: HashMap<&'static str, [[u64; 3]; 3]>,
}

/// Runs `modserve report` and returns (exit status, stdout, the JSON report).
fn report(
    config: &Path,
    prometheus: &str,
    out: &Path,
    candidate: &[&str],
    log: &Path,
) -> (i32, String, serde_json::Value) {
    let run = Command::new(env!("CARGO_BIN_EXE_modserve"))
        .env_remove("RUST_LOG")
        .args(["report", "--config"])
        .arg(config)
        .args(["--prometheus", prometheus, "--task", "abuse", "--window", "15m"])
        .args(candidate)
        .arg("--disagreement-log")
        .arg(log)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    let stderr = String::from_utf8_lossy(&run.stderr);
    let json = std::fs::read_to_string(out.join("launch-report.json"))
        .unwrap_or_else(|e| panic!("no report ({e}); stdout: {stdout}\nstderr: {stderr}"));
    (run.status.code().unwrap_or(-1), stdout, serde_json::from_str(&json).unwrap())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_from_prometheus_matches_the_known_mix() {
    let _shared = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("disagreements.jsonl");
    let server = ChildServer::start(&models(&log)).await;
    let prometheus = Prometheus::start(&[server.metrics_addr]).await;
    // The first scrape sees every series at zero: only then does traffic start, so each count
    // in the window starts from a sample.
    for q in [
        r#"sum(modserve_shadow_comparisons_total{shadow_model="tiny-abuse-v2"})"#,
        r#"sum(modserve_verdicts_total{task="abuse"})"#,
    ] {
        assert_eq!(prometheus.wait_for(q, 0.0).await.map(|(_, v)| v), Some(0.0), "{q}");
    }

    // The mix: golden texts the two models score differently and alike, 40 reviews, and a
    // verdict for the first 30.
    let mut golden_by: HashMap<(String, String), Golden> = HashMap::new();
    for g in golden() {
        golden_by.insert((g.model.clone(), g.text.clone()), g);
    }
    let texts = [
        "you idiot",
        "this is dumb",
        "you are stupid",
        "great product",
        "what a moron",
        "i will kill you",
        "that could hurt",
    ];
    let mut mix = Mix::default();
    let mut client = server.client().await;
    let mut verdicts = Vec::new();
    let (n, judged) = (40, 30);
    for i in 0..n {
        let text = texts[i % texts.len()];
        let reply = client.classify(request(vec![review(&format!("m{i}"), text)])).await.unwrap().into_inner();
        let live = decision_index(decision_name(reply.results[0].tasks[0].decision));
        let g = &golden_by[&("tiny-abuse".to_string(), text.to_string())];
        assert_eq!(live, decision_index(&g.decision), "{text}: the live answer is the golden one");
        let v2 = decision_index(&golden_by[&("tiny-abuse-v2".to_string(), text.to_string())].decision);
        let strict = strict_2(&g.probabilities);
        mix.comparisons.entry("v2").or_default()[live][v2] += 1;
        mix.comparisons.entry("strict").or_default()[live][strict] += 1;
        if i < judged {
            let human = HUMAN[(i / 2) % 3];
            for (who, d) in [("live", live), ("v2", v2), ("strict", strict)] {
                mix.verdicts.entry(who).or_default()[d][human as usize - 1] += 1;
            }
            verdicts.push(pb::Verdict {
                review: Some(review(&format!("m{i}"), text)),
                task: "abuse".into(),
                decision: human as i32,
                labels: vec![],
                source: String::new(),
                surface: None,
            });
        }
    }
    let mut feedback = FeedbackClient::new(server.channel().await);
    let answer = feedback.submit_verdicts(pb::SubmitVerdictsRequest { verdicts }).await.unwrap().into_inner();
    assert_eq!(answer.accepted as usize, judged);
    // Prometheus has the final counts once it has scraped them.
    for (q, want) in [
        (r#"sum(modserve_shadow_comparisons_total{shadow_model="tiny-abuse-v2"})"#, n),
        (r#"sum(modserve_shadow_comparisons_total{shadow_policy="strict-2"})"#, n),
        (r#"sum(modserve_verdicts_total{task="abuse"})"#, 3 * judged),
    ] {
        assert_eq!(prometheus.wait_for(q, want as f64).await.map(|(_, v)| v), Some(want as f64), "{q}");
    }
    // The recording rules put live and candidate precision side by side: each equals the mix's.
    // (Every series started from a scraped zero, so increase() has nothing to extrapolate.)
    for (who, model, role, policy) in [
        ("live", "tiny-abuse", "live", "default"),
        ("v2", "tiny-abuse-v2", "shadow", "default"),
        ("strict", "tiny-abuse", "shadow", "strict-2"),
    ] {
        let m = mix.verdicts[who];
        let rejected: u64 = m[2].iter().sum();
        let want = m[2][2] as f64 / rejected as f64;
        let rule = format!(
            r#"modserve:verdict_reject_precision:ratio_1d{{task="abuse", model="{model}", role="{role}", policy="{policy}"}}"#
        );
        // Rules run every second: poll until the evaluation after the last scrape shows.
        let mut got = None;
        for _ in 0..100 {
            got = prometheus.query(&rule).await.map(|(_, v)| v);
            if got.is_some_and(|v| (v - want).abs() < 1e-9) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(got.is_some_and(|v| (v - want).abs() < 1e-9), "{rule}: {got:?}, the mix says {want}");
    }
    let v2_mix = mix.comparisons["v2"];
    let disagreements: u64 =
        (0..3).flat_map(|i| (0..3).map(move |j| (i, j))).filter(|(i, j)| i != j).map(|(i, j)| v2_mix[i][j]).sum();
    assert!(disagreements > 0, "the mix must hold disagreements");
    // Wait for the disagreement log's writer to flush every line of the model shadow.
    let mut lines = 0;
    for _ in 0..300 {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"tiny-abuse-v2\""))
            .count() as u64;
        if lines >= disagreements {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(lines, disagreements);

    let go = dir.path().join("go.toml");
    std::fs::write(
        &go,
        format!("{}\n[launch]\nmin_compared = 40\nmin_verdicts = 30\nmax_precision_drop = 1.0\n", models(&log)),
    )
    .unwrap();
    let no_go = dir.path().join("no-go.toml");
    std::fs::write(&no_go, format!("{}\n[launch]\nmin_compared = 40\nmin_verdicts = 1000\n", models(&log))).unwrap();
    let url = prometheus.url();

    // The model shadow: GO.
    let out = dir.path().join("v2");
    let (code, stdout, r) =
        tokio::task::block_in_place(|| report(&go, &url, &out, &["--candidate", "tiny-abuse-v2"], &log));
    assert_eq!(code, 0, "{stdout}");
    let input = &r["input"];
    assert_eq!(matrix(&input["comparisons"]), v2_mix);
    assert_eq!(input["outcomes"]["compared"], n);
    assert_eq!(input["outcomes"]["sampled_out"].as_u64().unwrap_or(0), 0);
    // Nothing pressed this shadow: its effective rate stayed at the configured one.
    assert_eq!(input["sample_rate"]["configured"], 1.0, "{}", input["sample_rate"]);
    assert_eq!(input["sample_rate"]["effective_min"], 1.0, "{}", input["sample_rate"]);
    assert_eq!(matrix(&input["verdicts"]["live"]), mix.verdicts["live"]);
    assert_eq!(matrix(&input["verdicts"]["candidate"]), mix.verdicts["v2"]);
    assert_eq!(input["candidate"]["version"], "2.0.0");
    assert_eq!(input["live"]["policy"], "default");
    let latency = &input["latency"];
    assert!(
        latency["live"]["p50"].as_f64().unwrap() > 0.0 && latency["candidate"]["p99"].as_f64().unwrap() > 0.0,
        "{latency}"
    );
    let deltas: u64 = input["score_deltas"]
        .as_object()
        .unwrap()
        .values()
        .map(|b| b.as_array().unwrap().last().unwrap()[1].as_u64().unwrap())
        .sum();
    assert_eq!(deltas, 2 * n as u64, "one delta per review and shared label (insult, threat)");
    let logged = &input["disagreements"];
    assert_eq!(logged["matched"], disagreements);
    let stricter: u64 = (0..3).flat_map(|i| (i + 1..3).map(move |j| (i, j))).map(|(i, j)| v2_mix[i][j]).sum();
    assert_eq!(logged["by_direction"]["stricter"].as_u64().unwrap_or(0), stricter);
    assert_eq!(logged["by_direction"]["more_lenient"].as_u64().unwrap_or(0), disagreements - stricter);
    let agree: u64 = (0..3).map(|i| v2_mix[i][i]).sum();
    assert_eq!(r["derived"]["agreement"]["agree"], agree);
    let agreement = format!("{:.1}%", agree as f64 * 100.0 / n as f64);
    assert!(stdout.contains(&agreement), "the Markdown shows the agreement {agreement}: {stdout}");
    assert!(stdout.contains("**Decision: GO**"), "{stdout}");
    chromium_opens(&out.join("launch-report.html"));
    forecast_matches_the_mix(&r, &v2_mix, &mix.verdicts["live"], &mix.verdicts["v2"]);

    // The policy-only shadow: its decisions are the live scores under strict-2.
    let out = dir.path().join("strict");
    let candidate = ["--candidate", "tiny-abuse", "--policy", "strict-2"];
    let (code, stdout, r) = tokio::task::block_in_place(|| report(&go, &url, &out, &candidate, &log));
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(matrix(&r["input"]["comparisons"]), mix.comparisons["strict"]);
    assert_eq!(matrix(&r["input"]["verdicts"]["candidate"]), mix.verdicts["strict"]);
    assert_eq!(r["input"]["candidate"]["policy_version"], "2");
    assert!(r["input"]["score_deltas"].as_object().unwrap().is_empty(), "same model, same scores");

    // Too few verdicts for the stricter criteria: NO-GO, exit 2, naming the criterion.
    let out = dir.path().join("no-go");
    let (code, stdout, r) =
        tokio::task::block_in_place(|| report(&no_go, &url, &out, &["--candidate", "tiny-abuse-v2"], &log));
    assert_eq!(code, 2, "{stdout}");
    assert_eq!(r["decision"], "NO-GO");
    assert!(r["failed"].as_array().unwrap().iter().any(|f| f == "moderator verdicts"), "{}", r["failed"]);
    assert!(stdout.contains("**Decision: NO-GO**"), "{stdout}");

    // A candidate Prometheus has never seen: exit 1 and a clear reason.
    let run = Command::new(env!("CARGO_BIN_EXE_modserve"))
        .args(["report", "--config"])
        .arg(&go)
        .args(["--prometheus", &url, "--task", "abuse", "--candidate", "tiny-abuse-v9", "--out"])
        .arg(dir.path().join("none"))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("tiny-abuse-v9"), "{}", String::from_utf8_lossy(&run.stderr));
    drop(prometheus);
    server.stop().await;
}

/// The forecast in queue units, computed here from the mix: each compared review of the 15
/// minute window stands for offered / compared reviews, 96 windows make a day.
fn forecast_matches_the_mix(
    r: &serde_json::Value,
    comparisons: &[[u64; 3]; 3],
    live: &[[u64; 3]; 3],
    v2: &[[u64; 3]; 3],
) {
    let outcomes = r["input"]["outcomes"].as_object().unwrap();
    let offered: u64 = outcomes.values().map(|v| v.as_u64().unwrap()).sum();
    let compared = outcomes["compared"].as_u64().unwrap();
    let per_review = offered as f64 / compared as f64 * 86_400.0 / 900.0;
    let f = &r["forecast"];
    assert_eq!(f["unit"], "day", "{f}");
    let close = |got: &serde_json::Value, want: f64, what: &str| {
        let got = got.as_f64().unwrap_or_else(|| panic!("{what}: {got}"));
        assert!((got - want).abs() < 1e-9 * want.abs().max(1.0), "{what}: {got} != {want}");
    };
    let live_decided = |d: usize| comparisons[d].iter().sum::<u64>() as f64 * per_review;
    let v2_decided = |d: usize| (0..3).map(|l| comparisons[l][d]).sum::<u64>() as f64 * per_review;
    close(&f["review_queue"]["live"], live_decided(1), "live REVIEW items per day");
    close(&f["review_queue"]["candidate"], v2_decided(1), "candidate REVIEW items per day");
    // Each figure: the model's decisions of a kind per day times the share of its verdicts on
    // them a moderator decided otherwise; no figure without such verdicts.
    for (key, decided, wrong) in [("overturned_rejects", 2, [0usize, 1]), ("missed_abuse", 0, [1, 2])] {
        for (side, m, per_day) in [("live", live, live_decided(decided)), ("candidate", v2, v2_decided(decided))] {
            let row = m[decided];
            let n: u64 = row.iter().sum();
            let e = &f[key][side];
            if n == 0 {
                assert!(e["value"].is_null() && e["missing"].is_string(), "{key} {side}: {e}");
            } else {
                let share = wrong.iter().map(|&h| row[h]).sum::<u64>() as f64 / n as f64;
                close(&e["value"], per_day * share, &format!("{key} {side}"));
            }
        }
    }
}

/// Opens the page in headless Chromium: it must load with no console error or failed resource,
/// show its decision, and render a screenshot (copied to `MODSERVE_REPORT_SCREENSHOT` when set,
/// which is how docs/images/launch-report.png is made).
fn chromium_opens(html: &Path) {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("chromium (Debian package `chromium`; scripts/setup --test installs it)");
    let profile = tempfile::tempdir().unwrap();
    let shot = profile.path().join("report.png");
    let url = format!("file://{}", html.display());
    let base = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().join("profile").display()));
    };
    let mut dump = Command::new(&chromium);
    base(&mut dump);
    let dom = dump.arg("--dump-dom").arg(&url).output().unwrap();
    let stderr = String::from_utf8_lossy(&dom.stderr);
    assert!(dom.status.success(), "chromium --dump-dom failed: {stderr}");
    let text = String::from_utf8_lossy(&dom.stdout);
    assert!(text.contains("<svg") && text.contains("GO"), "the page rendered without its charts or decision");
    for bad in ["Uncaught", "Failed to load resource", "ERROR:CONSOLE", "Refused to"] {
        assert!(!stderr.contains(bad), "chromium reported {bad:?}: {stderr}");
    }
    let mut capture = Command::new(&chromium);
    base(&mut capture);
    let run = capture
        .arg("--window-size=1280,2400")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(run.status.success(), "chromium --screenshot failed: {}", String::from_utf8_lossy(&run.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "not a real screenshot: {} bytes", png.len());
    if let Some(to) = std::env::var_os("MODSERVE_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, to).unwrap();
    }
}
