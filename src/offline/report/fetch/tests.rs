//! The fetcher against a fake Prometheus on 127.0.0.1:0 that holds fixed series and answers
//! label-matcher selectors (and `histogram_quantile` with fixed values) the way Prometheus
//! would: exact counts with resets, replicas, series born in the window, baselines before it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use serde_json::{Value, json};

use super::*;
use crate::offline::report::prometheus::{Credentials, Point, Secret};

const END: f64 = 1_795_000_000.0;
const START: f64 = END - 3600.0;

fn series(name: &str, labels: &[(&str, &str)], values: &[(f64, f64)]) -> Value {
    let mut metric: serde_json::Map<String, Value> =
        labels.iter().map(|(k, v)| (k.to_string(), Value::from(*v))).collect();
    metric.insert("__name__".into(), name.into());
    metric.insert("job".into(), "modserve".into());
    let values: Vec<Value> = values.iter().map(|(t, v)| json!([t, v.to_string()])).collect();
    json!({ "metric": metric, "values": values })
}

fn comparison(instance: &str, live: &str, policy: &str, decisions: (&str, &str), values: &[(f64, f64)]) -> Value {
    series(
        "modserve_shadow_comparisons_total",
        &[
            ("instance", instance),
            ("task", "abuse"),
            ("live_model", live),
            ("live_version", "1.0.0"),
            ("live_policy", "default"),
            ("live_policy_version", "1"),
            ("shadow_model", if policy == "tight" { "abuse-v1" } else { "abuse-v2" }),
            ("shadow_version", "2.0.0"),
            ("shadow_policy", policy),
            ("shadow_policy_version", "4"),
            ("live_decision", decisions.0),
            ("shadow_decision", decisions.1),
        ],
        values,
    )
}

/// Every series the fake Prometheus holds.
fn store() -> Vec<Value> {
    let pair = |outcome: &'static str| {
        [("task", "abuse"), ("live_model", "abuse-v1"), ("shadow_model", "abuse-v2"), ("shadow_policy", "strict")]
            .into_iter()
            .chain([("outcome", outcome)])
            .collect::<Vec<_>>()
    };
    let bucket = |label: &'static str, le: &'static str| {
        vec![
            ("task", "abuse"),
            ("live_model", "abuse-v1"),
            ("shadow_model", "abuse-v2"),
            ("shadow_policy", "strict"),
            ("label", label),
            ("le", le),
        ]
    };
    let verdict =
        |model: &'static str, role: &'static str, policy: &'static str, md: &'static str, hd: &'static str| {
            vec![
                ("task", "abuse"),
                ("model", model),
                ("version", "1"),
                ("role", role),
                ("policy", policy),
                ("policy_version", "1"),
                ("source", "queue"),
                ("model_decision", md),
                ("human_decision", hd),
            ]
        };
    vec![
        // Baseline 100 before the window, +50, a reset to 40 (counts 40), +30: 120.
        comparison(
            "a",
            "abuse-v1",
            "strict",
            ("allow", "allow"),
            &[(START - 30.0, 100.0), (START + 60.0, 150.0), (START + 120.0, 40.0), (END - 10.0, 70.0)],
        ),
        // A replica born inside the window: its first sample counts in full: 5 + 20.
        comparison("b", "abuse-v1", "strict", ("allow", "allow"), &[(START + 600.0, 5.0), (END, 25.0)]),
        comparison("a", "abuse-v1", "strict", ("allow", "review"), &[(START - 15.0, 10.0), (END - 100.0, 10.0)]),
        comparison("a", "abuse-v1", "strict", ("reject", "review"), &[(START + 10.0, 0.0), (END, 7.0)]),
        // Gone before the window: ignored, not even discovered.
        comparison("a", "abuse-v0", "strict", ("allow", "allow"), &[(START - 100.0, 3.0)]),
        comparison("a", "abuse-v1", "lax", ("allow", "allow"), &[(START + 10.0, 1.0)]),
        // A policy-only shadow of the live model.
        comparison("a", "abuse-v1", "tight", ("allow", "review"), &[(START + 10.0, 0.0), (END, 9.0)]),
        series("modserve_shadow_reviews_total", &pair("compared"), &[(START - 5.0, 10.0), (END, 142.0)]),
        series("modserve_shadow_reviews_total", &pair("sampled_out"), &[(START + 5.0, 300.0)]),
        series("modserve_shadow_reviews_total", &pair("queue_full"), &[(START - 5.0, 1.0), (END, 3.0)]),
        series("modserve_shadow_score_delta_bucket", &bucket("insult", "-0.1"), &[(START + 1.0, 2.0)]),
        series("modserve_shadow_score_delta_bucket", &bucket("insult", "0"), &[(START + 1.0, 100.0)]),
        series("modserve_shadow_score_delta_bucket", &bucket("insult", "+Inf"), &[(START + 1.0, 152.0)]),
        // A policy-only candidate must not read these: abuse-v1 never runs as a shadow, so any
        // delta or shadow latency it reported would be made up.
        series(
            "modserve_shadow_score_delta_bucket",
            &[
                ("task", "abuse"),
                ("live_model", "abuse-v1"),
                ("shadow_model", "abuse-v1"),
                ("shadow_policy", "tight"),
                ("label", "insult"),
                ("le", "+Inf"),
            ],
            &[(START + 1.0, 5.0)],
        ),
        series("modserve_batches_total", &[("model", "abuse-v1"), ("role", "live")], &[(START, 7.0), (END, 57.0)]),
        series("modserve_batches_total", &[("model", "abuse-v2"), ("role", "shadow")], &[(START + 1.0, 40.0)]),
        series("modserve_inference_errors_total", &[("model", "abuse-v2"), ("role", "shadow")], &[(END, 1.0)]),
        series("modserve_verdicts_total", &verdict("abuse-v1", "live", "default", "reject", "reject"), &[(END, 8.0)]),
        series("modserve_verdicts_total", &verdict("abuse-v1", "live", "default", "allow", "review"), &[(END, 2.0)]),
        series("modserve_verdicts_total", &verdict("abuse-v2", "shadow", "strict", "review", "reject"), &[(END, 6.0)]),
        series("modserve_verdicts_total", &verdict("abuse-v2", "shadow", "lax", "allow", "allow"), &[(END, 50.0)]),
        // Labelled verdicts of the policy-only pair: two replicas of one cell, another cell, and
        // a series whose probability is no probability (left out, with a note).
        series(
            LABELLED_VERDICTS_TOTAL,
            &labelled("a", "1", ("allow", "review", "allow")),
            &[(START - 5.0, 2.0), (END, 6.0)],
        ),
        series(LABELLED_VERDICTS_TOTAL, &labelled("b", "1", ("allow", "review", "allow")), &[(START + 5.0, 3.0)]),
        series(LABELLED_VERDICTS_TOTAL, &labelled("a", "0.05", ("review", "review", "review")), &[(END, 7.0)]),
        series(LABELLED_VERDICTS_TOTAL, &labelled("a", "0", ("allow", "allow", "allow")), &[(END, 1.0)]),
    ]
}

/// A labelled-verdict series of the policy-only pair (abuse-v1 under `tight`).
fn labelled(
    instance: &'static str,
    p: &'static str,
    (l, s, h): (&'static str, &'static str, &'static str),
) -> Vec<(&'static str, &'static str)> {
    vec![
        ("instance", instance),
        ("task", "abuse"),
        ("live_model", "abuse-v1"),
        ("shadow_model", "abuse-v1"),
        ("shadow_policy", "tight"),
        ("inclusion_probability", p),
        ("live_decision", l),
        ("shadow_decision", s),
        ("human_decision", h),
    ]
}

/// `name{k="v",...}` from the first selector in a query.
fn parse_selector(query: &str) -> (String, Vec<(String, String)>) {
    let open = query.find('{').unwrap();
    let name = query[..open].rsplit(['(', ' ']).next().unwrap().to_string();
    let close = open + query[open..].find('}').unwrap();
    let matchers = query[open + 1..close]
        .split(',')
        .map(|m| {
            let (k, v) = m.split_once('=').unwrap();
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect();
    (name, matchers)
}

fn answer(query: &str) -> Value {
    let (name, matchers) = parse_selector(query);
    if let Some(rest) = query.strip_prefix("histogram_quantile(") {
        let q: f64 = rest.split(',').next().unwrap().parse().unwrap();
        let role = &matchers.iter().find(|(k, _)| k == "role").unwrap().1;
        let model = &matchers.iter().find(|(k, _)| k == "model").unwrap().1;
        let value = match (model.as_str(), role.as_str(), q) {
            (_, "live", 0.5) => "0.004",
            (_, "live", _) => "0.012",
            // Finite, so a policy-only candidate that asked for its own latency would get one.
            ("abuse-v1", "shadow", _) => "0.5",
            (_, _, 0.5) => "0.006",
            _ => "NaN",
        };
        return json!({"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[END, value]}]}});
    }
    if query.starts_with("max(max_over_time(") || query.starts_with("avg(") || query.starts_with("min(") {
        let value = if query.starts_with("max(") {
            "1"
        } else if query.starts_with("avg(") {
            "0.5"
        } else {
            "0.25"
        };
        return json!({"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[END, value]}]}});
    }
    assert!(query.ends_with("[4200s]"), "window plus lookback: {query}");
    let result: Vec<Value> = store()
        .into_iter()
        .filter(|s| {
            s["metric"]["__name__"] == name.as_str() && matchers.iter().all(|(k, v)| s["metric"][k] == v.as_str())
        })
        .collect();
    json!({"status":"success","data":{"resultType":"matrix","result":result}})
}

/// Answers every connection with `answer(query)` until dropped.
struct FakePrometheus {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakePrometheus {
    fn start() -> FakePrometheus {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                respond(stream.unwrap());
            }
        });
        FakePrometheus { url, stop, thread: Some(thread) }
    }
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(stream: TcpStream) {
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    reader.read_line(&mut request).unwrap();
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 2 {
        line.clear();
    }
    let target = request.split_whitespace().nth(1).unwrap();
    let encoded = target.split(['?', '&']).find_map(|p| p.strip_prefix("query=")).unwrap();
    let query = url_decode(encoded);
    let time = target.split(['?', '&']).find_map(|p| p.strip_prefix("time=")).unwrap();
    assert_eq!(time, "1795000000.000");
    let body = answer(&query).to_string();
    let mut stream = reader.into_inner();
    let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}");
}

fn url_decode(s: &str) -> String {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn args(url: &str, candidate: &str, policy: Option<&str>) -> FetchArgs {
    let mut a = FetchArgs::new(url, "abuse", candidate);
    a.policy = policy.map(str::to_string);
    a.end = UNIX_EPOCH + Duration::from_secs(END as u64);
    a
}

#[test]
fn report_counter_steps_count_resets_and_series_born_in_the_window() {
    let s = |values: &[(f64, f64)]| Series {
        metric: Labels::new(),
        values: values.iter().map(|&(time, value)| Point { time, value }).collect(),
    };
    assert_eq!(window_count(&s(&[(0.0, 100.0), (20.0, 150.0), (30.0, 40.0), (40.0, 70.0)]), 10.0), 120);
    assert_eq!(window_count(&s(&[(20.0, 5.0), (30.0, 25.0)]), 10.0), 25, "no baseline: starts from 0");
    assert_eq!(
        window_count(&s(&[(5.0, 9.0), (10.0, 10.0), (20.0, 10.0)]), 10.0),
        0,
        "the sample at start is the baseline"
    );
    assert_eq!(promql_duration(Duration::from_secs(4200)), "4200s");
    assert_eq!(promql_duration(Duration::from_millis(1500)), "1500ms");
    assert_eq!(selector(&[("a", "x\"y"), ("b", "z")]), r#"{a="x\"y",b="z"}"#);
}

#[test]
fn report_fetch_reads_exact_counts_and_discovers_the_subjects() {
    let prometheus = FakePrometheus::start();
    let input = fetch(&args(&prometheus.url, "abuse-v2", Some("strict"))).unwrap();
    let subject = |model: &str, version: &str, policy: &str, pv: &str| Subject {
        model: model.into(),
        version: version.into(),
        policy: policy.into(),
        policy_version: pv.into(),
    };
    assert_eq!(input.live, subject("abuse-v1", "1.0.0", "default", "1"));
    assert_eq!(input.candidate, subject("abuse-v2", "2.0.0", "strict", "4"));
    assert_eq!(input.comparisons, [[145, 0, 0], [0, 0, 0], [0, 7, 0]]);
    assert_eq!(input.outcome("compared"), 132);
    assert_eq!(input.outcome("sampled_out"), 300);
    assert_eq!(input.outcome("queue_full"), 2);
    assert_eq!(input.outcome("deadline"), 0);
    assert_eq!(input.score_deltas["insult"], [(-0.1, 2), (0.0, 100), (f64::INFINITY, 152)]);
    let latency = input.latency.unwrap();
    assert_eq!(latency.live, Some(Quantiles { p50: 0.004, p99: 0.012 }));
    assert_eq!(latency.candidate, None, "a NaN quantile is no measurement");
    assert_eq!((input.live_batches, input.live_errors), (50, 0));
    assert_eq!((input.candidate_batches, input.candidate_errors), (40, 1));
    assert_eq!(
        input.sample_rate,
        Some(SampleRates { configured: 1.0, effective_mean: 0.5, effective_min: 0.25 }),
        "from the rate gauges"
    );
    let v = input.verdicts.unwrap();
    assert_eq!((v.live[2][2], v.live[0][1]), (8, 2));
    assert_eq!(v.candidate[1][2], 6);
    assert_eq!(v.candidate.iter().flatten().sum::<u64>(), 6, "the lax policy's verdicts are another candidate's");
    assert!(input.notes.is_empty(), "{:?}", input.notes);
}

#[test]
fn report_fetch_policy_only_candidates_need_a_policy_and_skip_their_own_inference() {
    let prometheus = FakePrometheus::start();
    let e = fetch(&args(&prometheus.url, "abuse-v1", None)).unwrap_err();
    assert!(matches!(e, ReportError::PolicyRequired { .. }), "{e}");
    assert!(e.to_string().contains("--policy (policies seen: tight)"), "{e}");
    let input = fetch(&args(&prometheus.url, "abuse-v1", Some("tight"))).unwrap();
    assert!(input.policy_only());
    assert_eq!(input.comparisons[0][1], 9);
    assert!(input.score_deltas.is_empty());
    assert_eq!(input.latency.unwrap().candidate, None);
    assert_eq!(input.sample_rate, None, "a policy-only shadow takes every review it samples");
}

#[test]
fn report_fetch_reads_labelled_verdicts_by_probability_and_notes_bad_series() {
    let prometheus = FakePrometheus::start();
    let input = fetch(&args(&prometheus.url, "abuse-v1", Some("tight"))).unwrap();
    // Ordered by probability: 7 at p = 0.05; at p = 1, 4 in the window on replica a (6 - 2)
    // and 3 born in it on b.
    let cell =
        |p, live, candidate, human, count| LabelledCell { inclusion_probability: p, live, candidate, human, count };
    assert_eq!(input.labelled, [cell(0.05, 1, 1, 1, 7), cell(1.0, 0, 1, 0, 7)]);
    assert!(
        input.notes.iter().any(|n| n.starts_with("ignored labelled verdicts with unknown labels")),
        "{:?}",
        input.notes
    );
    // Another candidate has none.
    assert!(fetch(&args(&prometheus.url, "abuse-v2", Some("strict"))).unwrap().labelled.is_empty());
}

#[test]
fn report_fetch_errors_name_the_cause() {
    let prometheus = FakePrometheus::start();
    let e = fetch(&args(&prometheus.url, "abuse-v2", None)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "candidate abuse-v2 shadows task abuse under several policies (lax, strict): choose one with --policy"
    );
    let e = fetch(&args(&prometheus.url, "abuse-v9", None)).unwrap_err();
    let expected =
        format!("no shadow comparisons for task abuse, candidate abuse-v9 in the last 1h at {}", prometheus.url);
    assert!(e.to_string().starts_with(&expected), "{e}");
    let e = fetch(&args("ftp://prometheus:9090", "abuse-v2", None)).unwrap_err();
    assert!(e.to_string().starts_with("--prometheus \"ftp://prometheus:9090\": not a URL like http://"), "{e}");
    let mut bad_token = args(&prometheus.url, "abuse-v2", None);
    bad_token.access.credentials = Some(Credentials::Bearer(Secret::Env("MODSERVE_TEST_SURELY_UNSET_7f3a".into())));
    let e = fetch(&bad_token).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--prometheus-bearer-token-env MODSERVE_TEST_SURELY_UNSET_7f3a: the environment variable is not set (or empty)"
    );
}

#[test]
fn verdict_scores_turn_cumulative_buckets_into_counts_per_bucket() {
    let (allow, reject) = (Decision::Allow, Decision::Reject);
    // insult, two replicas: reject 3 at <= 0.5 (2 + 1), 7 at <= 0.9, 8 in all; allow 4 at <= 0.05.
    let rows = [
        ("insult", reject, 0.05, 0),
        ("insult", reject, 0.5, 2),
        ("insult", reject, 0.5, 1),
        ("insult", reject, 0.9, 7),
        ("insult", reject, f64::INFINITY, 8),
        ("insult", allow, 0.05, 4),
        ("insult", allow, 0.9, 4),
        ("insult", allow, f64::INFINITY, 4),
        ("threat", allow, 1.0, 0),
    ];
    let scores = VerdictScores::from_cumulative(rows.map(|(l, h, le, n)| (l.to_string(), h, le, n)));
    let insult: Vec<_> = scores.buckets("insult").collect();
    // Lower edges: (0.05, 0.5] holds 3, (0.5, 0.9] 4, above 0.9 (the +Inf bucket) 1; allow 4 in [0, 0.05].
    assert_eq!(insult, [(0.0, allow, 4), (0.05, reject, 3), (0.5, reject, 4), (0.9, reject, 1)]);
    let verdicts = |label| scores.buckets(label).map(|(_, _, n)| n).sum::<u64>();
    assert_eq!(verdicts("insult"), 12);
    assert_eq!(verdicts("threat"), 0);
    assert_eq!(scores.buckets("spam").count(), 0);
}
