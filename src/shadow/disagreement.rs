//! The disagreement log: reviews where a shadow's decision differs from the live one, as JSON
//! lines, for moderators to label. Written by its own thread from a bounded queue: if the queue
//! is full or the disk fails, lines are dropped and counted, never blocking inference. Files
//! rotate at a size bound and only the newest few are kept.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::SystemTime;

use serde::Serialize;

pub use crate::config::LogConfig;
use crate::jsonl::{self, Finished, Sink};
#[cfg(test)]
use crate::metrics::DISAGREEMENT_LOG_LINES_TOTAL;
use crate::metrics::LogMetrics;
#[cfg(test)]
use std::path::Path;

/// One model's side of a disagreement.
#[derive(Debug, Serialize)]
pub struct Side<'a> {
    pub model: &'a str,
    pub version: &'a str,
    /// The decision policy's name and version (a policy-only shadow differs from live only here).
    pub policy: &'a str,
    pub policy_version: &'a str,
    pub decision: &'a str,
    pub scores: BTreeMap<&'a str, f32>,
}

/// One line of the log.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub task: &'a str,
    pub review_id: &'a str,
    /// "stricter" or "more_lenient": the shadow relative to live.
    pub direction: &'a str,
    /// The surface the review was classified for, when its task lists it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub surface: Option<&'a str>,
    pub live: Side<'a>,
    pub shadow: Side<'a>,
    pub text_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
}

/// The cheap, cloneable front door; the writer thread exits once every handle is dropped.
#[derive(Clone)]
pub struct DisagreementLog {
    lines: Lines,
    pub config: LogConfig,
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl DisagreementLog {
    /// Opens (creating folders as needed) and starts the writer thread.
    pub fn start(config: LogConfig) -> std::io::Result<(DisagreementLog, JoinHandle<()>)> {
        let files = Files {
            path: config.path.clone(),
            max_file_bytes: config.max_file_bytes,
            max_files: config.max_files,
            queue_capacity: config.queue_capacity,
        };
        let (lines, thread) = Lines::start("disagreement-log", files, LogMetrics::new())?;
        Ok((DisagreementLog { lines, config }, thread))
    }

    /// Queues one entry; drops and counts it if the writer is behind.
    pub fn write(&self, entry: &Entry<'_>) {
        self.lines.write(entry);
    }
}

/// Where a JSON-lines file goes and how far it may grow: the disagreement log's and the
/// labelling queue's settings alike.
#[derive(Debug, Clone)]
pub struct Files {
    pub path: PathBuf,
    pub max_file_bytes: u64,
    pub max_files: usize,
    pub queue_capacity: usize,
}

/// A JSON-lines file of finished lines (the disagreement log, the labelling queue), written by
/// the shared writer (`jsonl`); cheap to clone, and the thread exits once every handle is dropped.
#[derive(Clone)]
pub struct Lines {
    /// Bounded; a slow disk sheds lines instead of blocking a shadow worker.
    sink: Sink<String>,
}

impl Lines {
    /// Opens `files.path` (creating folders as needed, cutting a torn last line) and starts the
    /// writer thread, named `name` (also how its warnings name the file).
    pub fn start(name: &'static str, files: Files, metrics: LogMetrics) -> std::io::Result<(Lines, JoinHandle<()>)> {
        let settings = jsonl::Settings {
            name,
            path: files.path,
            max_file_bytes: files.max_file_bytes,
            max_file_age: None,
            max_files: files.max_files,
            retention: None,
            queue_capacity: files.queue_capacity,
        };
        let (sink, thread) = jsonl::start(settings, Finished, metrics)?;
        Ok((Lines { sink }, thread))
    }

    /// Queues one entry as a line; drops and counts it if the writer is behind.
    pub fn write(&self, entry: &impl Serialize) {
        match serde_json::to_string(entry) {
            Ok(line) => self.sink.send(line, 1),
            Err(_) => self.sink.dropped(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            time: now_rfc3339(),
            task: "abuse",
            review_id: "r1",
            direction: "stricter",
            surface: None,
            live: Side {
                model: "a",
                version: "1",
                policy: "default",
                policy_version: "1",
                decision: "allow",
                scores: [("insult", 0.1)].into(),
            },
            shadow: Side {
                model: "b",
                version: "2",
                policy: "default",
                policy_version: "1",
                decision: "review",
                scores: [("insult", 0.6)].into(),
            },
            text_sha256: "00".repeat(32),
            text: None,
        }
    }

    /// The log's counters are process-wide: its tests run one at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_failing_disk_drops_and_counts_lines_without_blocking() {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        // /dev/full fails every write with ENOSPC, like a full disk.
        assert!(Path::new("/dev/full").exists(), "Linux provides /dev/full");
        let prometheus = crate::metrics::install().unwrap();
        let value = |outcome: &str| {
            let text = prometheus.render();
            let key = format!("{DISAGREEMENT_LOG_LINES_TOTAL}{{outcome=\"{outcome}\"}} ");
            text.lines().find_map(|l| l.strip_prefix(&key)).map_or(0.0, |v| v.parse::<f64>().unwrap())
        };
        let before = (value("written"), value("dropped_io_error"));
        let config = LogConfig {
            path: "/dev/full".into(),
            sample_rate: 1.0,
            include_text: false,
            max_file_bytes: 4096,
            max_files: 2,
            queue_capacity: 100,
        };
        let (log, thread) = DisagreementLog::start(config).unwrap();
        for _ in 0..50 {
            log.write(&entry());
        }
        drop(log);
        thread.join().unwrap();
        assert!(Path::new("/dev/full").exists(), "never rotated away");
        assert_eq!(value("written") - before.0, 0.0);
        let dropped = value("dropped_io_error") - before.1;
        assert_eq!(dropped, 50.0);
    }

    #[test]
    fn writes_parseable_lines_and_rotates_within_bounds() {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/disagreements.jsonl");
        let config = LogConfig {
            path: path.clone(),
            sample_rate: 1.0,
            include_text: false,
            max_file_bytes: 2000,
            max_files: 3,
            queue_capacity: 10_000,
        };
        let (log, thread) = DisagreementLog::start(config).unwrap();
        for _ in 0..100 {
            log.write(&entry());
        }
        drop(log);
        thread.join().unwrap();
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert_eq!(files.len(), 3, "{files:?}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(text.len() as u64 <= 2000, "{f:?} is {} bytes", text.len());
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["review_id"], "r1");
                assert!(v.get("text").is_none());
            }
        }
    }
}
