//! Launch criteria: validation of `[launch]` and pass / fail on the sample input and on gaps.

use super::*;
use crate::config::launch_defaults as defaults;
use crate::offline::report::input::tests::input;
use crate::policy::Confusion;

fn run(input: &ReportInput, criteria: &LaunchCriteria) -> Vec<CriterionResult> {
    evaluate(input, &Derived::of(input), criteria)
}

fn find<'a>(results: &'a [CriterionResult], name: &str) -> &'a CriterionResult {
    results.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no {name} in {results:?}"))
}

#[test]
fn report_criteria_validation_names_every_bad_key_and_keeps_defaults() {
    let raw = RawLaunchCriteria {
        max_error_rate: Some(2.0),
        max_shed_rate: Some(-0.1),
        max_p99: Some("soon".into()),
        min_compared: Some(10),
        ..RawLaunchCriteria::default()
    };
    let mut errors = Vec::new();
    let c = validate_criteria(&raw, &mut errors);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].starts_with("launch.max_error_rate 2: must be within 0..=1"), "{errors:?}");
    assert!(errors[1].starts_with("launch.max_shed_rate"), "{errors:?}");
    assert!(errors[2].starts_with("launch.max_p99 \"soon\""), "{errors:?}");
    assert_eq!(c.min_compared, 10);
    assert_eq!(c.max_error_rate, Some(defaults::MAX_ERROR_RATE));
    let toml_text = "min_verdicts = 0\nmax_p99 = \"50ms\"\nmax_recall_drop = 0.05\n";
    let raw: RawLaunchCriteria = toml::from_str(toml_text).unwrap();
    let mut errors = Vec::new();
    let c = validate_criteria(&raw, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(c.max_p99, Some(Duration::from_millis(50)));
    assert_eq!((c.min_verdicts, c.max_recall_drop), (0, Some(0.05)));
    assert!(toml::from_str::<RawLaunchCriteria>("max_p95 = \"1s\"").is_err(), "unknown keys are rejected");
    assert_eq!(validate_criteria(&RawLaunchCriteria::default(), &mut errors), LaunchCriteria::default());
}

#[test]
fn report_criteria_pass_on_the_sample_and_fail_on_each_bad_figure() {
    let i = input();
    let results = run(&i, &LaunchCriteria { max_p99: Some(Duration::from_millis(50)), ..Default::default() });
    // Shed 50 of 1951 = 2.6% (< 5%); errors 1 of 1951 = 0.05% (< 0.1%); 1900 compared, 150
    // candidate verdicts.
    let failed: Vec<_> = results.iter().filter(|r| r.status != Status::Pass).collect();
    assert_eq!(failed.iter().map(|r| r.status).collect::<Vec<_>>(), [Status::NotChecked, Status::NotChecked]);
    assert_eq!(Decision::of(&results), Decision::Go);

    let strict = LaunchCriteria {
        min_compared: 2000,
        min_verdicts: 200,
        max_p99: Some(Duration::from_millis(10)),
        max_shed_rate: Some(0.01),
        ..Default::default()
    };
    let results = run(&i, &strict);
    assert_eq!(find(&results, "compared reviews").detail, "1900 compared reviews, need 2000");
    assert_eq!(find(&results, "moderator verdicts").detail, "150 verdicts, need 200");
    assert_eq!(find(&results, "inference p99").status, Status::Fail);
    assert_eq!(find(&results, "inference p99").measured, "18.50 ms");
    assert_eq!(find(&results, "shed rate").status, Status::Fail);
    assert_eq!(Decision::of(&results), Decision::NoGo);
}

#[test]
fn report_criteria_compare_precision_drops_at_both_levels() {
    let mut i = input();
    // Live precision@REJECT 25/30 = 83.3%; the candidate's 20/30 = 66.7%.
    i.verdicts.as_mut().unwrap().candidate = Confusion([[78, 4, 2], [6, 22, 4], [5, 5, 20]]);
    let results = run(&i, &LaunchCriteria::default());
    let r = find(&results, "precision drop @REJECT");
    assert_eq!(r.status, Status::Fail);
    assert_eq!(r.detail, "candidate precision@REJECT 66.7% is 16.7 pp below live's 83.3% (allowed 2.0 pp)");
    assert_eq!(r.measured, "16.7 pp");
    // A live model that never rejects gives no baseline at REJECT: skipped, and said so.
    i.verdicts.as_mut().unwrap().live = Confusion([[80, 6, 4], [6, 24, 10], [0, 0, 0]]);
    let results = run(&i, &LaunchCriteria::default());
    let r = find(&results, "precision drop @REJECT");
    assert_eq!(r.status, Status::Skipped);
    assert!(r.detail.contains("live precision@REJECT is n/a"), "{}", r.detail);
    assert_eq!(find(&results, "recall drop @REVIEW").status, Status::NotChecked);
}

#[test]
fn report_criteria_fail_when_required_data_is_missing() {
    let mut i = input();
    i.verdicts = None;
    i.latency = None;
    i.outcomes.clear();
    let criteria = LaunchCriteria { max_p99: Some(Duration::from_millis(50)), ..Default::default() };
    let results = run(&i, &criteria);
    let r = find(&results, "moderator verdicts");
    assert_eq!((r.status, r.detail.as_str()), (Status::Fail, "0 verdicts, need 100"));
    assert_eq!(find(&results, "precision drop @REVIEW").status, Status::Fail);
    let r = find(&results, "inference p99");
    assert_eq!((r.status, r.detail.as_str()), (Status::Fail, "no latency measured (offline evaluation)"));
    assert_eq!(find(&results, "error rate").status, Status::Fail);
    // Without limits the same gaps are not checked, and the decision can be GO.
    let lax = LaunchCriteria {
        min_verdicts: 0,
        max_precision_drop: None,
        max_error_rate: None,
        max_shed_rate: None,
        ..Default::default()
    };
    let results = run(&i, &lax);
    assert_eq!(Decision::of(&results), Decision::Go, "{results:?}");
}

#[test]
fn report_criteria_judge_a_policy_only_candidate_by_the_live_latency() {
    let mut i = input();
    i.candidate.model = i.live.model.clone();
    i.latency = Some(crate::offline::report::input::Latency { candidate: None, ..i.latency.unwrap() });
    let results = run(&i, &LaunchCriteria { max_p99: Some(Duration::from_millis(50)), ..Default::default() });
    let r = find(&results, "inference p99");
    assert_eq!(r.status, Status::Pass);
    assert!(r.detail.starts_with("policy-only candidate runs the live model: live p99 12.00 ms"), "{}", r.detail);
}

#[test]
fn report_criteria_validation_names_bad_queue_and_cost_keys() {
    let bad = |text: &str| {
        let raw: RawLaunchCriteria = toml::from_str(text).unwrap();
        let mut errors = Vec::new();
        let c = validate_criteria(&raw, &mut errors);
        (c, errors)
    };
    let (c, errors) = bad("max_review_queue_increase = 1.5\ncost_wrong_reject = -1.0\ncost_missed_abuse = 2.0");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("launch.max_review_queue_increase 1.5: must be within 0..=1"), "{errors:?}");
    assert_eq!(errors[1], "launch.cost_wrong_reject -1: must be a finite weight >= 0");
    assert_eq!((c.max_review_queue_increase, c.cost), (None, None));
    let (_, errors) = bad("cost_missed_abuse = 2.0");
    assert_eq!(errors, ["launch.cost_missed_abuse: set cost_wrong_reject with it"]);
    let (_, errors) = bad("cost_wrong_reject = 3.0");
    assert_eq!(errors, ["launch.cost_wrong_reject: set cost_missed_abuse with it"]);
    let (_, errors) = bad("reviews_per_day = 0");
    assert_eq!(errors, ["launch.reviews_per_day 0: must be more than 0"]);
    let (c, errors) = bad(
        "max_review_queue_increase = 0.05\ncost_wrong_reject = 3\ncost_missed_abuse = 1.5\nreviews_per_day = 500000",
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(c.max_review_queue_increase, Some(0.05));
    assert_eq!(c.cost, Some(crate::config::CostWeights { wrong_reject: 3.0, missed_abuse: 1.5 }));
    assert_eq!(c.reviews_per_day, Some(500_000));
    // Absent keys check nothing and add no row: existing configs keep their table.
    let results = run(&input(), &LaunchCriteria::default());
    assert!(results.iter().all(|r| r.name != "REVIEW queue increase" && r.name != "expected cost"));
}

#[test]
fn report_criteria_in_queue_units_flip_the_decision() {
    // The sample input forecasts 10% more REVIEW items than live (275 against 250 compared).
    let i = input();
    let lax = LaunchCriteria { max_review_queue_increase: Some(0.10), ..Default::default() };
    let results = run(&i, &lax);
    let r = find(&results, "REVIEW queue increase");
    assert_eq!((r.status, r.measured.as_str(), r.limit.as_str()), (Status::Pass, "+10.0%", "≤ +10.0%"));
    assert!(
        r.detail.starts_with("candidate 10250.8 REVIEW items per day against live's 9318.9 (+931.9)"),
        "{}",
        r.detail
    );
    assert_eq!(Decision::of(&results), Decision::Go);
    let strict = LaunchCriteria { max_review_queue_increase: Some(0.05), ..Default::default() };
    let results = run(&i, &strict);
    assert_eq!(find(&results, "REVIEW queue increase").status, Status::Fail);
    assert_eq!(Decision::of(&results), Decision::NoGo);
    // Per 1900 compared (x 2951 * 24 / 1900 for a day): live 80 * 5/30 = 13.33 overturned
    // REJECTs and 1570 * 10/90 = 174.44 missed abuse; the candidate 90 * 5/36 = 12.5 and
    // 1535 * 6/84 = 109.64, cheaper under any weights.
    let cost = |wrong_reject, missed_abuse| LaunchCriteria {
        cost: Some(crate::config::CostWeights { wrong_reject, missed_abuse }),
        ..Default::default()
    };
    let results = run(&i, &cost(100.0, 1.0));
    assert_eq!(find(&results, "expected cost").status, Status::Pass);
    // Make the candidate's REJECTs worse: 20 of 36 overturned.
    let mut worse = input();
    worse.verdicts.as_mut().unwrap().candidate = Confusion([[78, 4, 2], [4, 22, 4], [10, 10, 16]]);
    // Candidate: 90 * 20/36 = 50 overturned, against live's 13.33; missed abuse unchanged.
    let results = run(&worse, &cost(100.0, 1.0));
    let r = find(&results, "expected cost");
    assert_eq!(r.status, Status::Fail, "{r:?}");
    let per_cell = 2951.0 * 24.0 / 1900.0;
    let candidate = 100.0 * 90.0 * 20.0 / 36.0 + 1535.0 * 6.0 / 84.0;
    let live = 100.0 * 80.0 * 5.0 / 30.0 + 1570.0 * 10.0 / 90.0;
    let want = format!("{:.1} vs {:.1}", per_cell * candidate, per_cell * live);
    assert_eq!(r.measured, want);
    assert!(r.detail.starts_with("per day: candidate 100 × "), "{}", r.detail);
    assert_eq!(Decision::of(&results), Decision::NoGo);
    // With too few verdicts there is no forecast, and a set cost model fails.
    let results = run(&i, &LaunchCriteria { min_verdicts: 1000, ..cost(1.0, 1.0) });
    let r = find(&results, "expected cost");
    assert_eq!(r.status, Status::Fail);
    assert_eq!(r.detail, "cannot forecast the cost: 150 verdicts on live, fewer than launch.min_verdicts (1000)");
}
