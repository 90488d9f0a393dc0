//! The disagreement log on a disk that fills up under traffic (a small tmpfs, filled by another
//! file): lines are dropped and counted, live answers are unaffected, and writing resumes once
//! space is freed, with no torn line. Needs root (mount).
//!
//! A disk turning read-only under the log cannot be staged here: Linux refuses to remount a
//! file system read-only while a file on it is open for writing, as the log is. Any write error
//! (ENOSPC here, EROFS, EIO) takes the same path: the batch's lines are dropped and counted.

use std::process::Command;

use crate::common::*;

/// A 4 MiB tmpfs at a fresh directory, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount() -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"]).arg(dir.path()).status();
        assert!(ok.is_ok_and(|s| s.success()), "mount -t tmpfs failed (this test needs root with CAP_SYS_ADMIN)");
        Tmpfs(dir)
    }

    /// Fills the free space with one file.
    fn fill(&self) {
        let filler = self.0.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.0.path().join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_drops_and_counts_log_lines_live_is_unaffected_and_writing_resumes() {
    let root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")));
    if !root {
        eprintln!("SKIPPED: mounting a tmpfs needs root; run the suite as root (CI does) to cover this");
        return;
    }
    let _guard = exclusive().await;
    let disk = Tmpfs::mount();
    let log = disk.0.path().join("disagreements.jsonl");
    let server = TestServer::start(config(&format!(
        r#"
[shadow.disagreement_log]
path = {:?}
sample_rate = 1.0
[models.tiny-abuse]
path = "tests/fixtures/tiny-abuse"
[models.tiny-abuse-v2]
path = "tests/fixtures/tiny-abuse-v2"
[tasks.abuse]
live = "tiny-abuse"
shadows = [{{ model = "tiny-abuse-v2", sample_rate = 1.0 }}]
"#,
        path_str(&log)
    )))
    .await;
    let mut client = server.client().await;
    let base = server.scrape().await;
    let lines = |outcome: &'static str| [("outcome", outcome)];
    // "you are stupid": REJECT live, REVIEW shadow (golden fixtures): every review disagrees.
    let mut send = async |n: usize, tag: &str| {
        for i in 0..n {
            let r = client.classify(request(vec![review(&format!("{tag}-{i}"), "you are stupid")])).await;
            assert_eq!(
                decision_name(r.expect("live is unaffected").into_inner().results[0].tasks[0].decision),
                "REJECT"
            );
        }
    };
    let total = |scrape: &str| {
        delta(&base, scrape, "modserve_disagreement_log_lines_total", &lines("written"))
            + delta(&base, scrape, "modserve_disagreement_log_lines_total", &lines("dropped_io_error"))
    };
    // Every line is accounted for (written or dropped), 30 s at most.
    let settle = async |want: f64| {
        for _ in 0..600 {
            let now = server.scrape().await;
            if total(&now) >= want {
                return now;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("log lines not accounted for: {want} expected");
    };
    let written = |scrape: &str| delta(&base, scrape, "modserve_disagreement_log_lines_total", &lines("written"));
    let dropped =
        |scrape: &str| delta(&base, scrape, "modserve_disagreement_log_lines_total", &lines("dropped_io_error"));

    send(20, "rw").await;
    let now = settle(20.0).await;
    assert_eq!((written(&now), dropped(&now)), (20.0, 0.0));

    // Full: the last free bytes of the log's own page may still take a few lines; the rest are
    // dropped and counted.
    disk.fill();
    send(20, "full").await;
    let now = settle(40.0).await;
    assert!(dropped(&now) >= 10.0, "lines on the full disk are dropped and counted: {}", dropped(&now));
    let written_while_full = written(&now);

    disk.free();
    send(10, "freed").await;
    let now = settle(50.0).await;
    assert_eq!(written(&now), written_while_full + 10.0, "writing resumes once space is freed");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count() as f64, written(&now), "the file holds exactly the lines counted as written");
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every line parses: no torn line");
    }
    server.stop().await;
}
