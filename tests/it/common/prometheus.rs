//! A real Prometheus (the Debian `prometheus` package) for tests: scrapes the given targets
//! every second with `deploy/prometheus/modserve-rules.yml`, on a free port, in a temp dir,
//! killed on drop.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{http_get, repo};

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (job `modserve`) and returns once it is ready.
    pub async fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo().join("deploy/prometheus/modserve-rules.yml");
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules:?}\nscrape_configs:\n  - job_name: modserve\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus on PATH (Debian package `prometheus`; scripts/setup --test installs it)");
        let prometheus = Prometheus { child, addr, _dir: dir };
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() && http_get(addr, "/-/ready").await.0 == 200 {
                return prometheus;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prometheus did not become ready within 30 s");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An instant query: every sample as (labels, evaluation time, value).
    pub async fn query_all(&self, promql: &str) -> Vec<(serde_json::Value, f64, f64)> {
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={}", url_encode(promql))).await;
        assert_eq!(status, 200, "{promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let time = s["value"][0].as_f64().unwrap();
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (s["metric"].clone(), time, value)
            })
            .collect()
    }

    /// The first sample of an instant query, as (evaluation time, value).
    pub async fn query(&self, promql: &str) -> Option<(f64, f64)> {
        self.query_all(promql).await.first().map(|(_, t, v)| (*t, *v))
    }

    /// Polls until the query's first value is `want` (bounded: 30 s); returns the last
    /// (evaluation time, value) seen.
    pub async fn wait_for(&self, promql: &str, want: f64) -> Option<(f64, f64)> {
        self.wait_until(promql, |v| v == want).await
    }

    /// Polls until the query's first value is at least `min` (bounded: 30 s); returns the last
    /// (evaluation time, value) seen. For counters that earlier tests in this process also grew.
    pub async fn wait_at_least(&self, promql: &str, min: f64) -> Option<(f64, f64)> {
        self.wait_until(promql, |v| v >= min).await
    }

    async fn wait_until(&self, promql: &str, done: impl Fn(f64) -> bool) -> Option<(f64, f64)> {
        let mut last = None;
        for _ in 0..300 {
            last = self.query(promql).await;
            if last.is_some_and(|(_, v)| done(v)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }

    /// Polls until the query has any value (bounded: 30 s).
    pub async fn wait_any(&self, promql: &str) -> Option<(f64, f64)> {
        for _ in 0..300 {
            if let Some(v) = self.query(promql).await {
                return Some(v);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}
