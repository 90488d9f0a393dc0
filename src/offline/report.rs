//! The launch-readiness report: one shadow candidate against the live model, ending in GO or
//! NO-GO against the launch criteria (`[launch]` in the config).
//!
//! # Layout
//!
//! - `input`: `ReportInput`, the plain numbers a report is built from. Two producers fill it:
//!   `fetch` (Prometheus, through the blocking client in `prometheus`, plus the
//!   disagreement log through `disagreements`) and the offline evaluator.
//! - `stats` (proportions, Wilson intervals), `derived` (coverage, agreement, precision and
//!   recall, score-delta distributions) and `weighted` (precision and recall from the labelling
//!   queue's verdicts, weighted by inverse inclusion probability): pure functions of the input.
//! - `forecast`: the comparison matrix and verdicts turned into queue units per day (REVIEW
//!   items, overturned REJECTs, missed abuse) for live and the candidate.
//! - `criteria`: the `[launch]` table, its validation, and the GO / NO-GO evaluation.
//! - `markdown`, `html` (with hand-written SVG charts from `svg`) and JSON: the renderings,
//!   sharing number formats from `format`.
//!
//! `run` is the `modserve report` subcommand: fetch, build, print the Markdown, write the files.

mod content;
mod criteria;
mod derived;
mod disagreements;
mod error;
mod fetch;
mod forecast;
mod format;
mod html;
mod input;
mod markdown;
mod prometheus;
mod stats;
mod svg;
mod weighted;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use criteria::{CriterionResult, Decision, LaunchCriteria, RawLaunchCriteria, Status, validate_criteria};
pub use derived::{
    Accuracy, Agreement, DeltaBucket, DeltaDistribution, Derived, ModelAccuracy, PrecisionRecall, Traffic,
};
pub use error::ReportError;
pub use fetch::{FetchArgs, VerdictScores, fetch, verdict_scores};
pub use forecast::{Expected, Forecast, Pair, QueueChange, Unit};
pub use input::{
    Disagreement, DisagreementSummary, LabelledCell, Latency, Quantiles, ReportInput, Source, Subject, Verdicts,
    cumulative_buckets,
};
pub use prometheus::{Access, AccessError, Credentials, QueryError, Secret};
pub use stats::Estimate;
pub use weighted::{WeightedAccuracy, WeightedEstimate, WeightedModelAccuracy, WeightedPrecisionRecall};

/// Exit status of `modserve report`: every checked criterion passed.
pub const EXIT_GO: u8 = 0;
/// Exit status of `modserve report`: the report could not be built.
pub const EXIT_ERROR: u8 = 1;
/// Exit status of `modserve report`: at least one criterion failed.
pub const EXIT_NO_GO: u8 = 2;

/// The files `write` creates in the output folder.
pub const MARKDOWN_FILE: &str = "launch-report.md";
pub const HTML_FILE: &str = "launch-report.html";
pub const JSON_FILE: &str = "launch-report.json";

/// A finished report: the input, what was derived from it, and the verdict of the criteria.
/// Serialised as is for `launch-report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(serialize_with = "input::serialize_time")]
    pub generated_at: SystemTime,
    pub input: ReportInput,
    pub derived: Derived,
    /// The forecast in queue units (REVIEW items, overturned REJECTs, missed abuse per day).
    pub forecast: Forecast,
    pub criteria: LaunchCriteria,
    pub results: Vec<CriterionResult>,
    pub decision: Decision,
    /// Names of the failed criteria, in evaluation order.
    pub failed: Vec<String>,
}

impl Report {
    pub fn build(input: ReportInput, criteria: &LaunchCriteria) -> Report {
        let derived = Derived::of(&input);
        let forecast = Forecast::of(&input, &derived, criteria);
        let results = criteria::evaluate(&input, &derived, criteria);
        let decision = Decision::of(&results);
        let failed = results.iter().filter(|r| r.status == Status::Fail).map(|r| r.name.clone()).collect();
        Report {
            generated_at: SystemTime::now(),
            input,
            derived,
            forecast,
            criteria: criteria.clone(),
            results,
            decision,
            failed,
        }
    }

    pub fn markdown(&self) -> String {
        markdown::render(self)
    }

    pub fn html(&self) -> String {
        html::render(self)
    }

    pub fn json(&self) -> String {
        // Every map key is a string and every float is finite or None: this cannot fail.
        serde_json::to_string_pretty(self).expect("a report serialises to JSON")
    }

    /// Writes the Markdown, HTML and JSON files into `dir` (created if missing) and returns
    /// their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
        std::fs::create_dir_all(dir).map_err(|error| ReportError::Write { path: dir.to_path_buf(), error })?;
        let mut written = Vec::new();
        for (name, text) in [(MARKDOWN_FILE, self.markdown()), (HTML_FILE, self.html()), (JSON_FILE, self.json())] {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|error| ReportError::Write { path: path.clone(), error })?;
            written.push(path);
        }
        Ok(written)
    }
}

/// What `modserve report` was asked for.
#[derive(Debug, Clone)]
pub struct RunArgs {
    pub fetch: FetchArgs,
    /// The folder for the three report files.
    pub out: PathBuf,
}

/// The `modserve report` subcommand: fetches, builds the report against `criteria`, writes the
/// three files and prints the Markdown to stdout. Returns the decision.
pub fn run(args: &RunArgs, criteria: &LaunchCriteria) -> Result<Decision, ReportError> {
    let report = Report::build(fetch(&args.fetch)?, criteria);
    report.write(&args.out)?;
    // The files are written: a closed stdout (`| head`) must not turn the decision into a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), report.markdown().as_bytes());
    Ok(report.decision)
}

/// Parses `--end`: RFC 3339 (`2026-11-26T13:00:00Z`) or unix seconds (`1795000000`,
/// `1795000000.5`).
pub fn parse_end(text: &str) -> Result<SystemTime, String> {
    if let Ok(secs) = text.parse::<f64>() {
        return if secs.is_finite() && secs >= 0.0 {
            Ok(UNIX_EPOCH + Duration::from_secs_f64(secs))
        } else {
            Err(format!("{text:?}: unix seconds must be a non-negative number"))
        };
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{text:?}: not RFC 3339 (2026-11-26T13:00:00Z) or unix seconds ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_end_times_parse_as_rfc3339_or_unix_seconds() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(parse_end("1795000000").unwrap(), t);
        assert_eq!(parse_end("2026-11-18T11:06:40Z").unwrap(), t);
        assert_eq!(parse_end("1795000000.5").unwrap(), t + Duration::from_millis(500));
        assert!(parse_end("yesterday").is_err());
        assert!(parse_end("-1").is_err());
    }

    #[test]
    fn report_subcommand_parses_its_flags_and_documents_exit_codes() {
        use clap::{CommandFactory, Parser};

        use crate::cli::{Cli, Command};
        let cli = Cli::try_parse_from([
            "modserve",
            "report",
            "--prometheus",
            "http://127.0.0.1:9090/prom",
            "--task",
            "abuse",
            "--candidate",
            "abuse-v2",
            "--window",
            "30m",
            "--end",
            "2026-11-18T11:06:40Z",
        ])
        .unwrap();
        let Some(Command::Report { prometheus, window, end, policy, out, .. }) = cli.command else {
            panic!("not the report subcommand")
        };
        assert_eq!(prometheus, "http://127.0.0.1:9090/prom");
        assert_eq!(window, Duration::from_secs(1800));
        assert_eq!(end, Some(UNIX_EPOCH + Duration::from_secs(1_795_000_000)));
        assert_eq!((policy, out), (None, PathBuf::from(".")));
        let defaults =
            Cli::try_parse_from(["modserve", "report", "--prometheus", "http://p", "--task", "t", "--candidate", "c"]);
        let Some(Command::Report { window, end, .. }) = defaults.unwrap().command else { panic!() };
        assert_eq!((window, end), (Duration::from_secs(3600), None));
        assert!(Cli::try_parse_from(["modserve", "report", "--task", "t", "--candidate", "c"]).is_err());
        // TLS and credentials: a token from a file or a variable, or a user with a password.
        let base = ["modserve", "report", "--prometheus", "https://p", "--task", "t", "--candidate", "c"];
        let parse = |extra: &[&str]| {
            Cli::try_parse_from(base.iter().chain(extra)).map(|cli| match cli.command {
                Some(Command::Report { access, .. }) => access.access(),
                _ => panic!("not the report subcommand"),
            })
        };
        let access = parse(&["--prometheus-ca-file", "ca.pem", "--prometheus-bearer-token-env", "TOKEN"]).unwrap();
        assert_eq!(access.ca_file, Some(PathBuf::from("ca.pem")));
        assert_eq!(access.credentials, Some(Credentials::Bearer(Secret::Env("TOKEN".into()))));
        let access = parse(&["--prometheus-user", "u", "--prometheus-password-file", "pw"]).unwrap();
        assert_eq!(
            access.credentials,
            Some(Credentials::Basic { user: "u".into(), password: Secret::File("pw".into()) })
        );
        assert_eq!(parse(&[]).unwrap(), Access::default());
        for bad in [
            &["--prometheus-user", "u"][..],
            &["--prometheus-password-env", "PW"],
            &["--prometheus-bearer-token-file", "t", "--prometheus-bearer-token-env", "T"],
            &["--prometheus-bearer-token-env", "T", "--prometheus-user", "u", "--prometheus-password-env", "PW"],
            &["--prometheus-user", "u", "--prometheus-password-env", "PW", "--prometheus-password-file", "pw"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
        let help = Cli::command().find_subcommand_mut("report").unwrap().render_long_help().to_string();
        assert!(help.contains("Exit status: 0 GO"), "{help}");
        assert!(help.contains("2 NO-GO"), "{help}");
    }

    #[test]
    fn report_writes_three_files_and_json_carries_the_decision() {
        let dir = tempfile::tempdir().unwrap();
        let report = Report::build(input::tests::input(), &LaunchCriteria::default());
        let files = report.write(&dir.path().join("out")).unwrap();
        assert_eq!(files.len(), 3);
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&files[2]).unwrap()).unwrap();
        assert_eq!(json["decision"], "GO");
        assert_eq!(json["derived"]["agreement"]["total"], 1900);
        assert_eq!(json["criteria"]["max_p99"], serde_json::Value::Null);
        assert_eq!(json["results"][0]["status"], "pass");
    }
}
