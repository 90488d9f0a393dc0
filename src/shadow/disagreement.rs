//! The disagreement log: reviews where a shadow's decision differs from the live one, as JSON
//! lines, for moderators to label. Written by its own thread from a bounded queue: if the queue
//! is full or the disk fails, lines are dropped and counted, never blocking inference. Files
//! rotate at a size bound and only the newest few are kept.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;

pub use crate::config::LogConfig;
#[cfg(test)]
use crate::metrics::DISAGREEMENT_LOG_LINES_TOTAL;
use crate::metrics::{LogMetrics, LogOutcome};

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

/// A JSON-lines file written by its own thread from a bounded queue (the disagreement log, the
/// labelling queue); cheap to clone, and the thread exits once every handle is dropped.
#[derive(Clone)]
pub struct Lines {
    /// Bounded; `try_send` so a slow disk sheds lines instead of blocking a shadow worker.
    tx: Sender<String>,
    metrics: std::sync::Arc<LogMetrics>,
}

impl Lines {
    /// Opens `files.path` (creating folders as needed) and starts the writer thread, named
    /// `name` (also how its warnings name the file).
    pub fn start(name: &'static str, files: Files, metrics: LogMetrics) -> std::io::Result<(Lines, JoinHandle<()>)> {
        if let Some(dir) = files.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open(&files.path)?;
        drop_torn_tail(&file, &files.path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (tx, rx) = crossbeam_channel::bounded(files.queue_capacity.max(1));
        let metrics = std::sync::Arc::new(metrics);
        let writer = Writer {
            name,
            rx,
            out: file,
            size,
            pending: Vec::new(),
            pending_lines: 0,
            failures: Failures::default(),
            files,
            metrics: metrics.clone(),
        };
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || writer.run())?;
        Ok((Lines { tx, metrics }, thread))
    }

    /// Queues one entry as a line; drops and counts it if the writer is behind.
    pub fn write(&self, entry: &impl Serialize) {
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

/// A process killed in the middle of a write (SIGKILL, OOM, power loss) can leave the file
/// ending in part of a line. Cut it back to the last newline before appending, so every line in
/// the log parses. Only regular files: a device or pipe given as the path is left alone.
fn drop_torn_tail(file: &File, path: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok(());
    }
    let mut reader = File::open(path)?;
    // Lines are a few hundred bytes; look back far enough to find the last newline.
    let mut keep = 0;
    let mut end = meta.len();
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        reader.seek(SeekFrom::Start(start))?;
        reader.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            keep = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if keep < meta.len() {
        tracing::warn!(
            path = %path.display(),
            bytes = meta.len() - keep,
            "removed a torn last line left by an unclean stop"
        );
        file.set_len(keep)?;
    }
    Ok(())
}

struct Writer {
    /// The thread's name, naming the file in warnings.
    name: &'static str,
    rx: Receiver<String>,
    out: File,
    /// Bytes in the current file, counting only what was written successfully.
    size: u64,
    /// Lines waiting for the next write: one `write` call per drained batch.
    pending: Vec<u8>,
    pending_lines: u64,
    failures: Failures,
    files: Files,
    metrics: std::sync::Arc<LogMetrics>,
}

/// Write failures since the last warning: a full disk fails every batch, and one warning per
/// `WARN_EVERY` (with the count) tells the on-call engineer as much as thousands would.
#[derive(Default)]
struct Failures {
    last_warned: Option<std::time::Instant>,
    lines_since: u64,
}

const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Writer {
    fn run(mut self) {
        while let Ok(line) = self.rx.recv() {
            self.push(&line);
            // Drain what is queued, then write it in one go, so lines reach the disk promptly
            // without a syscall per line under load.
            while let Ok(line) = self.rx.try_recv() {
                self.push(&line);
            }
            self.write_pending();
        }
    }

    fn push(&mut self, line: &str) {
        let grown = self.size + self.pending.len() as u64 + line.len() as u64 + 1;
        if self.size + self.pending.len() as u64 > 0 && grown > self.files.max_file_bytes {
            self.write_pending();
            if let Err(e) = self.rotate() {
                tracing::warn!(error = %e, path = %self.files.path.display(), "{}: rotation failed", self.name);
            }
        }
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.push(b'\n');
        self.pending_lines += 1;
    }

    /// Writes the batch; lines count as written only once the write succeeded, and as dropped
    /// (with the I/O error) otherwise, the file cut back to where the batch began.
    fn write_pending(&mut self) {
        if self.pending_lines == 0 {
            return;
        }
        let outcome = self.out.write_all(&self.pending);
        let lines = self.pending_lines;
        match outcome {
            Ok(()) => {
                self.size += self.pending.len() as u64;
                self.metrics.count_n(LogOutcome::Written, lines);
            }
            Err(e) => {
                // Part of the batch may have reached the file before the error (a disk filling
                // up): cut it back so no torn line is left for the next write to follow.
                if self.out.metadata().is_ok_and(|m| m.is_file()) {
                    let _ = self.out.set_len(self.size);
                }
                self.metrics.count_n(LogOutcome::DroppedIoError, lines);
                self.failures.lines_since += lines;
                if self.failures.last_warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    let lines = std::mem::take(&mut self.failures.lines_since);
                    self.failures.last_warned = Some(std::time::Instant::now());
                    tracing::warn!(error = %e, lines, path = %self.files.path.display(),
                        "{}: write failed; lines dropped (warned at most every 10s)", self.name);
                }
            }
        }
        self.pending.clear();
        self.pending_lines = 0;
    }

    /// `log` -> `log.1` -> `log.2` ...; the oldest beyond `max_files` is deleted.
    fn rotate(&mut self) -> std::io::Result<()> {
        let path = &self.files.path;
        // Only regular files rotate: a device or pipe given as the path is written as is.
        if !std::fs::metadata(path).map(|m| m.is_file()).unwrap_or(false) {
            self.size = 0;
            return Ok(());
        }
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
        let keep = self.files.max_files.max(1);
        if keep == 1 {
            std::fs::remove_file(path)?;
        } else {
            let _ = std::fs::remove_file(numbered(keep - 1));
            for n in (1..keep - 1).rev() {
                let _ = std::fs::rename(numbered(n), numbered(n + 1));
            }
            std::fs::rename(path, numbered(1))?;
        }
        self.out = open(path)?;
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
    fn a_torn_last_line_is_cut_back_to_the_last_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        drop_torn_tail(&open(&path).unwrap(), &path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
        // Whole lines are left alone; a file with no newline at all is emptied.
        drop_torn_tail(&open(&path).unwrap(), &path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
        std::fs::write(&path, "x".repeat(100_000)).unwrap();
        drop_torn_tail(&open(&path).unwrap(), &path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
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
