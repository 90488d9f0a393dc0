//! Summarises the disagreement log (JSON lines written by `crate::shadow::disagreement`, rotated as
//! `PATH.1`, `PATH.2`, ...) for one task and candidate within the window: counts by direction
//! and the disagreements with the largest score differences. Lines that do not parse are
//! skipped and counted.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

use super::error::ReportError;
use super::input::{Disagreement, DisagreementSummary, TEXT_CHARS, TOP_DISAGREEMENTS};

/// Which lines count: this task and candidate (shadow model and policy), time in (start, end].
#[derive(Debug, Clone)]
pub struct Filter<'a> {
    pub task: &'a str,
    pub model: &'a str,
    pub policy: &'a str,
    /// Only lines of this surface, when set.
    pub surface: Option<&'a str>,
    pub start: SystemTime,
    pub end: SystemTime,
}

#[derive(Debug, Deserialize)]
struct Line {
    time: String,
    task: String,
    review_id: String,
    direction: String,
    #[serde(default)]
    surface: Option<String>,
    live: Side,
    shadow: Side,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Side {
    model: String,
    /// Absent in logs written before policies were logged: such lines match any policy.
    #[serde(default)]
    policy: Option<String>,
    decision: String,
    #[serde(default)]
    scores: BTreeMap<String, f64>,
}

/// Reads `path` and its rotated files (newest first) and summarises the matching lines.
pub fn summarize(path: &Path, filter: &Filter<'_>) -> Result<DisagreementSummary, ReportError> {
    let mut files = vec![path.to_path_buf()];
    for n in 1.. {
        let rotated = PathBuf::from(format!("{}.{n}", path.display()));
        if !rotated.exists() {
            break;
        }
        files.push(rotated);
    }
    let rotated = files.len() > 1;
    let mut summary = Summary::new(filter);
    let mut read = Vec::new();
    for file in files {
        let opened = match File::open(&file) {
            Ok(f) => f,
            // The live file may be missing right after a rotation; the rotated ones still count.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rotated => continue,
            Err(error) => return Err(ReportError::DisagreementLog { path: file, error }),
        };
        let mut reader = BufReader::new(opened);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => summary.line(&buf),
                Err(error) => return Err(ReportError::DisagreementLog { path: file, error }),
            }
        }
        read.push(file);
    }
    let mut out = summary.finish();
    out.files = read;
    Ok(out)
}

/// The running summary; `line` takes one raw line.
struct Summary<'a> {
    filter: &'a Filter<'a>,
    out: DisagreementSummary,
}

impl<'a> Summary<'a> {
    fn new(filter: &'a Filter<'a>) -> Summary<'a> {
        Summary { filter, out: DisagreementSummary::default() }
    }

    fn line(&mut self, raw: &[u8]) {
        let raw = raw.trim_ascii();
        if raw.is_empty() {
            return;
        }
        let Some((line, time)) = serde_json::from_slice::<Line>(raw)
            .ok()
            .and_then(|l| humantime::parse_rfc3339_weak(&l.time).ok().map(|t| (l, t)))
        else {
            self.out.unparseable += 1;
            return;
        };
        let f = self.filter;
        let policy_matches = line.shadow.policy.as_deref().is_none_or(|p| p == f.policy);
        let surface_matches = f.surface.is_none_or(|s| line.surface.as_deref() == Some(s));
        if !surface_matches
            || line.task != f.task
            || line.shadow.model != f.model
            || !policy_matches
            || time <= f.start
            || time > f.end
        {
            return;
        }
        self.out.matched += 1;
        *self.out.by_direction.entry(line.direction.clone()).or_default() += 1;
        self.keep(disagreement(line));
    }

    /// Keeps `d` if it is among the `TOP_DISAGREEMENTS` largest, ordered by |delta| then time.
    fn keep(&mut self, d: Disagreement) {
        let top = &mut self.out.top;
        let at = top
            .partition_point(|t| t.delta.abs() > d.delta.abs() || (t.delta.abs() == d.delta.abs() && t.time <= d.time));
        if at < TOP_DISAGREEMENTS {
            top.insert(at, d);
            top.truncate(TOP_DISAGREEMENTS);
        }
    }

    fn finish(self) -> DisagreementSummary {
        self.out
    }
}

fn disagreement(line: Line) -> Disagreement {
    let (label, delta) = line
        .shadow
        .scores
        .iter()
        .filter_map(|(label, s)| line.live.scores.get(label).map(|l| (label.clone(), s - l)))
        .fold((String::new(), 0.0f64), |best, (label, d)| if d.abs() > best.1.abs() { (label, d) } else { best });
    let text = line.text.map(|t| super::format::cut(&t, TEXT_CHARS));
    Disagreement {
        time: line.time,
        review_id: line.review_id,
        direction: line.direction,
        live_decision: line.live.decision,
        candidate_decision: line.shadow.decision,
        live_scores: line.live.scores,
        candidate_scores: line.shadow.scores,
        label,
        delta,
        text,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn line(id: &str, time: &str, policy: &str, live: f64, shadow: f64, text: Option<&str>) -> String {
        let mut v = serde_json::json!({
            "time": time, "task": "abuse", "review_id": id, "direction": if shadow > live { "stricter" } else { "more_lenient" },
            "live": {"model": "abuse-v1", "version": "1", "policy": "default", "policy_version": "1",
                     "decision": "allow", "scores": {"insult": live, "threat": 0.1}},
            "shadow": {"model": "abuse-v2", "version": "2", "policy": policy, "policy_version": "1",
                       "decision": "review", "scores": {"insult": shadow, "threat": 0.1, "spam": 0.9}},
            "text_sha256": "00"
        });
        if let Some(t) = text {
            v["text"] = t.into();
        }
        v.to_string()
    }

    #[test]
    fn report_disagreements_read_the_lines_the_server_writes() {
        use crate::shadow::disagreement::{Entry, Side};
        let side = |model, policy, decision, insult| Side {
            model,
            version: "1",
            policy,
            policy_version: "1",
            decision,
            scores: [("insult", insult)].into(),
        };
        let entry = Entry {
            time: crate::shadow::disagreement::now_rfc3339(),
            task: "abuse",
            review_id: "r1",
            direction: "stricter",
            surface: None,
            live: side("abuse-v1", "default", "allow", 0.25),
            shadow: side("abuse-v1", "tight", "review", 0.25),
            text_sha256: "00".repeat(32),
            text: Some("hello"),
        };
        let end = SystemTime::now() + Duration::from_secs(60);
        let filter = Filter {
            task: "abuse",
            model: "abuse-v1",
            policy: "tight",
            surface: None,
            start: end - Duration::from_secs(3600),
            end,
        };
        let mut summary = Summary::new(&filter);
        summary.line(serde_json::to_string(&entry).unwrap().as_bytes());
        let s = summary.finish();
        assert_eq!((s.matched, s.unparseable), (1, 0));
        assert_eq!((s.top[0].candidate_decision.as_str(), s.top[0].text.as_deref()), ("review", Some("hello")));
    }

    #[test]
    fn report_disagreements_kept_to_a_surface_read_that_surface_only() {
        use crate::shadow::disagreement::{Entry, Side};
        let side = |policy| Side {
            model: "abuse-v1",
            version: "1",
            policy,
            policy_version: "1",
            decision: "review",
            scores: [("insult", 0.5)].into(),
        };
        let entry = |surface| Entry {
            time: crate::shadow::disagreement::now_rfc3339(),
            task: "abuse",
            review_id: "r1",
            direction: "stricter",
            surface,
            live: side("default"),
            shadow: side("tight"),
            text_sha256: "00".repeat(32),
            text: None,
        };
        let end = SystemTime::now() + Duration::from_secs(60);
        let start = end - Duration::from_secs(3600);
        let on = |surface| Filter { task: "abuse", model: "abuse-v1", policy: "tight", surface, start, end };
        for (filter, want) in [(on(Some("kids")), 1), (on(Some("forum")), 0), (on(None), 3)] {
            let mut summary = Summary::new(&filter);
            for surface in [Some("kids"), Some("market"), None] {
                summary.line(serde_json::to_string(&entry(surface)).unwrap().as_bytes());
            }
            assert_eq!(summary.finish().matched, want, "{:?}", filter.surface);
        }
    }

    #[test]
    fn report_disagreements_are_filtered_counted_and_ranked_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let long = "é".repeat(200);
        let current = [
            line("r1", "2026-11-26T13:00:00.123Z", "strict", 0.2, 0.7, Some(&long)),
            "{not json".to_string(),
            line("other-policy", "2026-11-26T13:00:01Z", "lax", 0.0, 1.0, None),
            line("too-old", "2026-11-26T11:00:00Z", "strict", 0.0, 1.0, None),
        ];
        std::fs::write(&path, current.join("\n") + "\n").unwrap();
        let rotated: Vec<String> = (0..12)
            .map(|i| line(&format!("old{i}"), "2026-11-26T12:45:00Z", "strict", 0.5, 0.5 - i as f64 / 100.0, None))
            .collect();
        std::fs::write(dir.path().join("d.jsonl.1"), rotated.join("\n")).unwrap();
        let end = humantime::parse_rfc3339("2026-11-26T13:30:00Z").unwrap();
        let filter = Filter {
            task: "abuse",
            model: "abuse-v2",
            policy: "strict",
            surface: None,
            start: end - Duration::from_secs(3600),
            end,
        };
        let s = summarize(&path, &filter).unwrap();
        assert_eq!(s.files.len(), 2);
        assert_eq!((s.matched, s.unparseable), (13, 1));
        assert_eq!(s.by_direction["stricter"], 1);
        assert_eq!(s.by_direction["more_lenient"], 12);
        assert_eq!(s.top.len(), TOP_DISAGREEMENTS);
        assert_eq!(s.top[0].review_id, "r1");
        assert_eq!((s.top[0].label.as_str(), (s.top[0].delta * 1000.0).round()), ("insult", 500.0));
        let text = s.top[0].text.as_deref().unwrap();
        assert_eq!(text.chars().count(), TEXT_CHARS + 1, "cut to 120 characters plus an ellipsis");
        assert_eq!(s.top[1].review_id, "old11");
        assert!(s.top.iter().all(|d| d.review_id != "old0" && d.review_id != "old1"));

        let missing = summarize(&dir.path().join("nope.jsonl"), &filter).unwrap_err();
        assert!(missing.to_string().starts_with("cannot read the disagreement log"), "{missing}");
    }
}
