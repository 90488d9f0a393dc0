//! The disagreement log: reviews where a shadow's decision differs from the live one, as JSON
//! lines, for moderators to label. Written by its own thread from a bounded queue: if the queue
//! is full or the disk fails, lines are dropped and counted, never blocking inference. Files
//! rotate at a size bound and only the newest few are kept.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;

use crate::metrics::{LogMetrics, LogOutcome};

/// Settings (the `[shadow.disagreement_log]` table).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogConfig {
    pub path: PathBuf,
    /// Share of disagreements logged (by a hash of the review id).
    pub sample_rate: f64,
    /// Log the review text itself; otherwise only its sha256.
    pub include_text: bool,
    pub max_file_bytes: u64,
    /// Files kept: the live one plus `max_files - 1` rotated ones (`.1` is the newest).
    pub max_files: usize,
    pub queue_capacity: usize,
}

/// One model's side of a disagreement.
#[derive(Debug, Serialize)]
pub struct Side<'a> {
    pub model: &'a str,
    pub version: &'a str,
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
    pub live: Side<'a>,
    pub shadow: Side<'a>,
    pub text_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
}

/// The cheap, cloneable front door; the writer thread exits once every handle is dropped.
#[derive(Clone)]
pub struct DisagreementLog {
    /// Bounded; `try_send` so a slow disk sheds lines instead of blocking a shadow worker.
    tx: Sender<String>,
    pub config: LogConfig,
    metrics: std::sync::Arc<LogMetrics>,
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl DisagreementLog {
    /// Opens (creating folders as needed) and starts the writer thread.
    pub fn start(config: LogConfig) -> std::io::Result<(DisagreementLog, JoinHandle<()>)> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open(&config.path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (tx, rx) = crossbeam_channel::bounded(config.queue_capacity.max(1));
        let metrics = std::sync::Arc::new(LogMetrics::new());
        let writer = Writer { rx, out: BufWriter::new(file), size, config: config.clone(), metrics: metrics.clone() };
        let thread = std::thread::Builder::new().name("disagreement-log".into()).spawn(move || writer.run())?;
        Ok((DisagreementLog { tx, config, metrics }, thread))
    }

    /// Queues one entry; drops and counts it if the writer is behind.
    pub fn write(&self, entry: &Entry<'_>) {
        let line = match serde_json::to_string(entry) {
            Ok(l) => l,
            Err(_) => return self.metrics.count(LogOutcome::DroppedIoError),
        };
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.metrics.count(LogOutcome::DroppedQueueFull),
            Err(TrySendError::Disconnected(_)) => self.metrics.count(LogOutcome::DroppedIoError),
        }
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

struct Writer {
    rx: Receiver<String>,
    out: BufWriter<File>,
    size: u64,
    config: LogConfig,
    metrics: std::sync::Arc<LogMetrics>,
}

impl Writer {
    fn run(mut self) {
        while let Ok(line) = self.rx.recv() {
            self.write(&line);
            // Drain what is queued, then flush, so lines reach the disk promptly without a
            // syscall per line under load.
            while let Ok(line) = self.rx.try_recv() {
                self.write(&line);
            }
            if let Err(e) = self.out.flush() {
                tracing::warn!(error = %e, path = %self.config.path.display(), "disagreement log: flush failed");
            }
        }
        let _ = self.out.flush();
    }

    fn write(&mut self, line: &str) {
        if self.size > 0
            && self.size + line.len() as u64 + 1 > self.config.max_file_bytes
            && let Err(e) = self.rotate()
        {
            tracing::warn!(error = %e, path = %self.config.path.display(), "disagreement log: rotation failed");
        }
        // One buffered write per line, newline included, so a crash leaves whole lines only
        // (up to the buffer boundary).
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        match self.out.write_all(&bytes) {
            Ok(()) => {
                self.size += bytes.len() as u64;
                self.metrics.count(LogOutcome::Written);
            }
            Err(e) => {
                self.metrics.count(LogOutcome::DroppedIoError);
                tracing::debug!(error = %e, "disagreement log: write failed");
            }
        }
    }

    /// `log` -> `log.1` -> `log.2` ...; the oldest beyond `max_files` is deleted.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let path = &self.config.path;
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
        let keep = self.config.max_files.max(1);
        if keep == 1 {
            std::fs::remove_file(path)?;
        } else {
            let _ = std::fs::remove_file(numbered(keep - 1));
            for n in (1..keep - 1).rev() {
                let _ = std::fs::rename(numbered(n), numbered(n + 1));
            }
            std::fs::rename(path, numbered(1))?;
        }
        self.out = BufWriter::new(open(path)?);
        self.size = 0;
        Ok(())
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
            live: Side { model: "a", version: "1", decision: "allow", scores: [("insult", 0.1)].into() },
            shadow: Side { model: "b", version: "2", decision: "review", scores: [("insult", 0.6)].into() },
            text_sha256: "00".repeat(32),
            text: None,
        }
    }

    #[test]
    fn writes_parseable_lines_and_rotates_within_bounds() {
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
