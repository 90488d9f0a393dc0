//! A modserve in a process of its own: the real binary, started on a config written to a temp
//! dir. For tests that have a real Prometheus read exact totals: the metrics recorder is
//! process-wide, and the in-process servers of the tests beside them (same model names, same
//! labels) would add to it.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use tonic::transport::Channel;

use super::*;

/// The `modserve` binary with the test's ONNX Runtime (and no `RUST_LOG` from the caller).
pub fn modserve() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modserve"));
    cmd.env("MODSERVE_ONNXRUNTIME_LIB", ort_lib()).env_remove("RUST_LOG");
    cmd
}

/// Runs `command` to its end and returns what it printed; kills it and fails the test if it is
/// still running after `bound` (a liveness bound: a hang fails its test instead of holding the
/// suite until CI's own limit).
pub fn output_within(command: &mut Command, bound: Duration) -> std::process::Output {
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the command starts");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(bound) {
        Ok(output) => output.expect("the command's output is read"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("{command:?} was still running after {bound:?}; killed");
        }
    }
}

/// The addresses a server logs in its "listening" line.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    /// The HTTP/JSON API's, when `server.http_listen` is set.
    pub http: Option<SocketAddr>,
}

/// Collects a child's stderr (JSON logs) on a thread; returns its "listening" addresses and the
/// thread, which yields every line once the child has exited. A child that does not log them
/// within 60 s is killed and the test fails with its logs.
pub fn read_logs(child: &mut Child) -> (Listening, JoinHandle<String>) {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let logs = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("\"listening\"") {
                let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
                let addr = |key: &str| v[key].as_str().unwrap().parse::<SocketAddr>().ok();
                let _ = tx.send(Listening {
                    grpc: addr("grpc").expect("the gRPC address"),
                    metrics: addr("metrics").expect("the metrics address"),
                    http: addr("http"),
                });
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(listening) => (listening, logs),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not log its addresses:\n{}", logs.join().unwrap_or_default());
        }
    }
}

pub struct ChildServer {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    child: Child,
    logs: Option<JoinHandle<String>>,
    _dir: tempfile::TempDir,
}

impl ChildServer {
    /// Starts the binary on `body` (the tables after `[server]`, package paths relative to the
    /// repository as in `config`) and returns once health says SERVING.
    pub async fn start(body: &str) -> ChildServer {
        ChildServer::start_with("", body, &[]).await
    }

    /// `start`, with `server` lines added to `[server]` and `envs` set for the process.
    pub async fn start_with(server: &str, body: &str, envs: &[(&str, &str)]) -> ChildServer {
        ChildServer::start_command(modserve(), server, body, envs).await
    }

    /// `start`, the process allowed on CPU `cpu` only (by `taskset`, which execs the server).
    pub async fn start_on_cpu(cpu: usize, body: &str) -> ChildServer {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &cpu.to_string()])
            .arg(env!("CARGO_BIN_EXE_modserve"))
            .env("MODSERVE_ONNXRUNTIME_LIB", ort_lib())
            .env_remove("RUST_LOG");
        ChildServer::start_command(cmd, "", body, &[]).await
    }

    async fn start_command(mut cmd: Command, server: &str, body: &str, envs: &[(&str, &str)]) -> ChildServer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modserve.toml");
        let fixtures = format!("\"{}/", path_str(&repo().join("tests/fixtures")));
        let text = unbounded_shadows(&format!(
            "[server]\ngrpc_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n{server}\n{}",
            body.replace("\"tests/fixtures/", &fixtures)
        ));
        std::fs::write(&path, text).unwrap();
        let mut child = cmd
            .arg("--config")
            .arg(&path)
            .args(["--log-format", "json"])
            .envs(envs.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the modserve binary starts");
        let (Listening { grpc: grpc_addr, metrics: metrics_addr, http: http_addr }, logs) = read_logs(&mut child);
        let server = ChildServer { grpc_addr, metrics_addr, http_addr, child, logs: Some(logs), _dir: dir };
        wait_serving(server.channel().await).await;
        server
    }

    /// The config file the server was started with.
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("modserve.toml")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr)).unwrap().connect().await.expect("connect")
    }

    pub async fn client(&self) -> ModerationClient<Channel> {
        ModerationClient::new(self.channel().await)
    }

    pub async fn scrape(&self) -> String {
        scrape(self.metrics_addr).await
    }

    /// `TestServer::wait_for` on this server.
    pub async fn wait_for(&self, base: &str, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
        wait_for_growth(self.metrics_addr, base, name, labels, want).await
    }

    /// SIGTERM, then the exit: a clean one, or the test fails with the server's logs. Returns
    /// the logs.
    pub async fn stop(mut self) -> String {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -TERM {}", self.child.id());
        let exit = tokio::task::block_in_place(|| self.child.wait()).unwrap();
        let logs = self.logs.take().map(|l| l.join().unwrap_or_default()).unwrap_or_default();
        assert!(exit.success(), "the server exited with {exit}:\n{logs}");
        logs
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        // A test that failed before `stop` leaves no server behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
