//! nginx (the Debian package; `scripts/setup --test` installs it) in the foreground, as tests
//! put it in front of modserve or Prometheus: a gRPC load balancer over replicas, a TLS and auth
//! proxy. Each test writes its own `server`/`upstream` blocks; this module owns the rest.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running nginx, stopped (SIGTERM to the master, which stops its worker too; a SIGKILL would
/// orphan the worker) when dropped.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// Starts nginx with its files in `dir`, `http` inside its `http {}` block (where `ADDR` and
    /// `DIR` stand for `addr` and `dir`), and returns once it listens on `addr` (30 s at most).
    pub async fn start(dir: &Path, addr: SocketAddr, worker_connections: usize, http: &str) -> Nginx {
        use std::os::unix::fs::MetadataExt;
        let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        let conf = format!(
            "{user}\nworker_processes 1;\npid DIR/nginx.pid;\nerror_log DIR/error.log error;\n\
             events {{ worker_connections {worker_connections}; }}\nhttp {{\n    access_log off;\n    \
             client_body_temp_path DIR/client_body;\n    proxy_temp_path DIR/proxy;\n    \
             fastcgi_temp_path DIR/fastcgi;\n    uwsgi_temp_path DIR/uwsgi;\n    scgi_temp_path DIR/scgi;\n{http}}}\n",
            user = if root { "user root;" } else { "" },
        )
        .replace("ADDR", &addr.to_string())
        .replace("DIR", &dir.display().to_string());
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(binary())
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-g")
            .arg("daemon off;")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (Debian package `nginx`; scripts/setup --test installs it)");
        let nginx = Nginx { child, addr, dir: dir.to_path_buf() };
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return nginx;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("nginx did not listen within 30 s: {}", nginx.error_log());
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

/// `nginx` from PATH, else where the Debian package puts it (`/usr/sbin` is not on every
/// user's PATH).
fn binary() -> PathBuf {
    let on_path =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("nginx")).find(|f| f.is_file()));
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}
