//! A JSON-lines file written by its own thread from a bounded queue: the machinery the
//! disagreement log and the decision journal share. A full queue or a failing disk drops and
//! counts records, never blocking the caller. One `write` per drained batch; files rotate at a
//! size bound and, optionally, an age bound; only the newest few are kept, optionally only for so
//! long; a torn last line left by an unclean stop is cut at open.
//!
//! What goes on the queue is the owner's choice (`Render`): the disagreement log queues finished
//! lines, the journal queues a whole call's decisions and turns them into lines on the writer
//! thread, so the request path does no formatting or hashing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::metrics::{LogMetrics, LogOutcome};

/// Where and how a file is written.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Names the writer thread and its warnings ("disagreement-log", "labelling-queue", "journal").
    pub name: &'static str,
    pub path: PathBuf,
    pub max_file_bytes: u64,
    /// Rotate a non-empty file this long after it was started; `None` = by size only.
    pub max_file_age: Option<Duration>,
    /// Files kept: the live one plus `max_files - 1` rotated ones (`.1` is the newest).
    pub max_files: usize,
    /// Rotated files last written longer ago than this are deleted; `None` = by count only.
    pub retention: Option<Duration>,
    /// Messages the queue holds.
    pub queue_capacity: usize,
}

/// Turns queued messages into lines, on the writer thread.
pub trait Render: Send + 'static {
    type Message: Send + 'static;
    /// Appends the message's lines (without newlines) through `line`.
    fn render(&mut self, message: Self::Message, line: &mut dyn FnMut(&[u8]));
}

/// Finished lines, queued as they are.
pub struct Finished;

impl Render for Finished {
    type Message = String;
    fn render(&mut self, message: String, line: &mut dyn FnMut(&[u8])) {
        line(message.as_bytes());
    }
}

/// The cheap, cloneable front door; the writer thread drains the queue and exits once every
/// handle is dropped.
pub struct Sink<M> {
    /// Bounded; `try_send` so a slow disk sheds records instead of blocking the caller.
    tx: Sender<M>,
    metrics: Arc<LogMetrics>,
}

impl<M> Clone for Sink<M> {
    fn clone(&self) -> Self {
        Sink { tx: self.tx.clone(), metrics: self.metrics.clone() }
    }
}

impl<M> Sink<M> {
    /// Queues one message holding `records` lines; drops and counts them if the writer is behind.
    pub fn send(&self, message: M, records: u64) {
        match self.tx.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.metrics.count_n(LogOutcome::DroppedQueueFull, records),
            Err(TrySendError::Disconnected(_)) => self.metrics.count_n(LogOutcome::DroppedIoError, records),
        }
    }

    /// Counts records lost before they could be queued (they did not serialize).
    pub fn dropped(&self, records: u64) {
        self.metrics.count_n(LogOutcome::DroppedIoError, records);
    }
}

/// Opens (creating folders as needed, cutting a torn tail) and starts the writer thread.
pub fn start<R: Render>(
    settings: Settings,
    render: R,
    metrics: LogMetrics,
) -> std::io::Result<(Sink<R::Message>, JoinHandle<()>)> {
    if let Some(dir) = settings.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = open(&settings.path)?;
    drop_torn_tail(&file, &settings.path, settings.name)?;
    let meta = file.metadata()?;
    let size = meta.len();
    // A file carried over from before a restart counts its age from when it was created.
    let started = meta.created().ok().filter(|_| size > 0).unwrap_or_else(SystemTime::now);
    let (tx, rx) = crossbeam_channel::bounded(settings.queue_capacity.max(1));
    let metrics = Arc::new(metrics);
    let writer = Writer {
        rx,
        render,
        out: file,
        size,
        started,
        pending: Vec::new(),
        pending_lines: 0,
        scratch: Vec::new(),
        ends: Vec::new(),
        // Due at once: files left past their retention by the last run go at the first record.
        checked: Instant::now().checked_sub(AGE_CHECK).unwrap_or_else(Instant::now),
        failures: crate::log_rate::Every::new(WARN_EVERY),
        settings: settings.clone(),
        metrics: metrics.clone(),
    };
    let thread = std::thread::Builder::new().name(settings.name.into()).spawn(move || writer.run())?;
    Ok((Sink { tx, metrics }, thread))
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// A process killed in the middle of a write (SIGKILL, OOM, power loss) can leave the file
/// ending in part of a line. Cut it back to the last newline before appending, so every line in
/// the file parses. Only regular files: a device or pipe given as the path is left alone.
pub(crate) fn drop_torn_tail(file: &File, path: &Path, name: &str) -> std::io::Result<()> {
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
            "{name}: removed a torn last line left by an unclean stop"
        );
        file.set_len(keep)?;
    }
    Ok(())
}

struct Writer<R: Render> {
    rx: Receiver<R::Message>,
    render: R,
    out: File,
    /// Bytes in the current file, counting only what was written successfully.
    size: u64,
    /// When the current file was started, for `max_file_age`.
    started: SystemTime,
    /// Lines waiting for the next write: one `write` call per drained batch.
    pending: Vec<u8>,
    pending_lines: u64,
    /// One message's rendered lines, back to back, and where each ends (reused).
    scratch: Vec<u8>,
    ends: Vec<usize>,
    /// When the age bounds were last checked: at most once per `AGE_CHECK`.
    checked: Instant,
    failures: crate::log_rate::Every,
    settings: Settings,
    metrics: Arc<LogMetrics>,
}

/// Write failures are warned about at most once per `WARN_EVERY`, with the lines dropped since:
/// a full disk fails every batch, and one warning tells the on-call engineer as much as thousands.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How often an idle writer checks the age bounds: a quiet file still rotates and expires.
const AGE_CHECK: Duration = Duration::from_secs(1);

impl<R: Render> Writer<R> {
    fn run(mut self) {
        let aged = self.settings.max_file_age.is_some() || self.settings.retention.is_some();
        loop {
            let message = if aged {
                match self.rx.recv_timeout(AGE_CHECK) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        self.age_check();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            };
            self.age_check();
            self.take(message);
            // Drain what is queued, then write it in one go, so lines reach the disk promptly
            // without a syscall per line under load.
            while let Ok(message) = self.rx.try_recv() {
                self.take(message);
            }
            self.write_pending();
        }
    }

    fn take(&mut self, message: R::Message) {
        let (mut buf, mut ends) = (std::mem::take(&mut self.scratch), std::mem::take(&mut self.ends));
        buf.clear();
        ends.clear();
        self.render.render(message, &mut |line| {
            buf.extend_from_slice(line);
            ends.push(buf.len());
        });
        let mut start = 0;
        for &end in &ends {
            self.push(&buf[start..end]);
            start = end;
        }
        (self.scratch, self.ends) = (buf, ends);
    }

    fn push(&mut self, line: &[u8]) {
        let grown = self.size + self.pending.len() as u64 + line.len() as u64 + 1;
        if self.size + self.pending.len() as u64 > 0 && grown > self.settings.max_file_bytes {
            self.write_pending();
            self.rotate_logged();
        }
        self.pending.extend_from_slice(line);
        self.pending.push(b'\n');
        self.pending_lines += 1;
    }

    /// Rotates a non-empty file past `max_file_age`, and deletes rotated files past `retention`;
    /// at most once per `AGE_CHECK`, so a busy writer does not stat its files every batch.
    fn age_check(&mut self) {
        if self.checked.elapsed() < AGE_CHECK {
            return;
        }
        self.checked = Instant::now();
        if let Some(age) = self.settings.max_file_age
            && self.size > 0
            && self.started.elapsed().is_ok_and(|e| e >= age)
        {
            self.write_pending();
            self.rotate_logged();
        }
        if let Some(retention) = self.settings.retention {
            self.expire(retention);
        }
    }

    fn rotate_logged(&mut self) {
        if let Err(e) = self.rotate() {
            tracing::warn!(error = %e, path = %self.settings.path.display(), "{}: rotation failed", self.settings.name);
        }
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
                if let Some(lines) = self.failures.note_many(lines) {
                    tracing::warn!(error = %e, lines, path = %self.settings.path.display(),
                        "{}: write failed; lines dropped (warned at most every 10s)", self.settings.name);
                }
            }
        }
        self.pending.clear();
        self.pending_lines = 0;
    }

    fn numbered(&self, n: usize) -> PathBuf {
        PathBuf::from(format!("{}.{n}", self.settings.path.display()))
    }

    /// `log` -> `log.1` -> `log.2` ...; the oldest beyond `max_files` is deleted. Renames, so a
    /// shipper tailing the file by inode reads the rest of the old one and then the new one.
    fn rotate(&mut self) -> std::io::Result<()> {
        let path = self.settings.path.clone();
        // Only regular files rotate: a device or pipe given as the path is written as is.
        if !std::fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false) {
            self.size = 0;
            self.started = SystemTime::now();
            return Ok(());
        }
        let keep = self.settings.max_files.max(1);
        if keep == 1 {
            std::fs::remove_file(&path)?;
        } else {
            let _ = std::fs::remove_file(self.numbered(keep - 1));
            for n in (1..keep - 1).rev() {
                let _ = std::fs::rename(self.numbered(n), self.numbered(n + 1));
            }
            std::fs::rename(&path, self.numbered(1))?;
        }
        self.out = open(&path)?;
        self.size = 0;
        self.started = SystemTime::now();
        Ok(())
    }

    /// Deletes rotated files last written more than `retention` ago (the live file never).
    fn expire(&self, retention: Duration) {
        for n in 1..self.settings.max_files.max(1) {
            let path = self.numbered(n);
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > retention));
            if old && let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, path = %path.display(), "{}: cannot delete an expired file", self.settings.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(path: PathBuf) -> Settings {
        Settings {
            name: "test-log",
            path,
            max_file_bytes: 1 << 20,
            max_file_age: None,
            max_files: 3,
            retention: None,
            queue_capacity: 100,
        }
    }

    #[test]
    fn a_torn_last_line_is_cut_back_to_the_last_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        drop_torn_tail(&open(&path).unwrap(), &path, "test").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
        // Whole lines are left alone; a file with no newline at all is emptied.
        drop_torn_tail(&open(&path).unwrap(), &path, "test").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
        std::fs::write(&path, "x".repeat(100_000)).unwrap();
        drop_torn_tail(&open(&path).unwrap(), &path, "test").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[test]
    fn a_file_older_than_its_age_bound_rotates_even_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut s = settings(path.clone());
        s.max_file_age = Some(Duration::from_millis(1));
        let (sink, thread) = start(s, Finished, LogMetrics::new()).unwrap();
        sink.send("{\"n\":1}".to_string(), 1);
        // The idle writer wakes once per AGE_CHECK and rotates the aged file on its own.
        let rotated = PathBuf::from(format!("{}.1", path.display()));
        for _ in 0..100 {
            if rotated.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "{\"n\":1}\n");
        sink.send("{\"n\":2}".to_string(), 1);
        drop(sink);
        thread.join().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":2}\n");
    }

    #[test]
    fn rotated_files_past_retention_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let old = PathBuf::from(format!("{}.2", path.display()));
        std::fs::write(&old, "{}\n").unwrap();
        let day_ago = SystemTime::now() - Duration::from_secs(86_400);
        File::options().write(true).open(&old).unwrap().set_modified(day_ago).unwrap();
        let fresh = PathBuf::from(format!("{}.1", path.display()));
        std::fs::write(&fresh, "{}\n").unwrap();
        let mut s = settings(path.clone());
        s.retention = Some(Duration::from_secs(3600));
        let (sink, thread) = start(s, Finished, LogMetrics::new()).unwrap();
        sink.send("{}".to_string(), 1);
        drop(sink);
        thread.join().unwrap();
        assert!(!old.exists(), "a day-old file is past an hour's retention");
        assert!(fresh.exists(), "a fresh rotated file is kept");
    }
}
