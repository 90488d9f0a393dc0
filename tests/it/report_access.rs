//! `modserve report` against a real Prometheus behind nginx (the Debian package) as production
//! puts it: https with a private CA, and a bearer token or basic auth in front. Certificates are
//! made at run time (rcgen). The report is built with the right CA and credentials, and refused
//! with a clear error, naming what to check, with a wrong CA, no token, a wrong token or a wrong
//! password. The server runs in a process of its own (`ChildServer`), so the report reads its
//! totals alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::common::nginx::Nginx;
use crate::common::prometheus::Prometheus;
use crate::common::*;

/// A live model and a model shadow, so the report has a candidate.
fn models() -> String {
    format!(
        "[models.tiny-abuse]\npath = {:?}\n[models.tiny-abuse-v2]\npath = {:?}\n[tasks.abuse]\nlive = \"tiny-abuse\"\n\
         shadows = [{{ model = \"tiny-abuse-v2\", sample_rate = 1.0 }}]\n",
        path_str(&fixture("tiny-abuse")),
        path_str(&fixture("tiny-abuse-v2")),
    )
}

const TOKEN: &str = "prom-reader-7c1e";
const USER: &str = "report";
const PASSWORD: &str = "s3cret pass";

/// A CA certificate (PEM) and a server certificate and key it signed for 127.0.0.1.
fn certificates(name: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "prometheus");
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

/// nginx terminating TLS for `prometheus` on three prefixes: `/open/` (TLS only), `/bearer/`
/// (`Authorization: Bearer TOKEN`, else 401) and `/basic/` (basic auth, USER and PASSWORD),
/// each stripping its prefix as a reverse proxy in front of Prometheus does.
async fn start_nginx(dir: &Path, prometheus: SocketAddr, cert: &str, key: &str) -> Nginx {
    std::fs::write(dir.join("server.crt"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    // nginx's own plain-text scheme: no htpasswd tool needed.
    std::fs::write(dir.join("htpasswd"), format!("{USER}:{{PLAIN}}{PASSWORD}\n")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let http = r#"    server {
        listen ADDR ssl;
        ssl_certificate DIR/server.crt;
        ssl_certificate_key DIR/server.key;
        location /open/ {
            proxy_pass http://PROMETHEUS/;
        }
        location /bearer/ {
            if ($http_authorization != "Bearer TOKEN") {
                return 401;
            }
            proxy_pass http://PROMETHEUS/;
        }
        location /basic/ {
            auth_basic "prometheus";
            auth_basic_user_file DIR/htpasswd;
            proxy_pass http://PROMETHEUS/;
        }
    }
"#
    .replace("PROMETHEUS", &prometheus.to_string())
    .replace("TOKEN", TOKEN);
    Nginx::start(dir, addr, 64, &http).await
}

/// How a `modserve report` run ended.
struct Run {
    code: i32,
    stderr: String,
    /// Whether launch-report.json was written (the report was built, GO or NO-GO).
    built: bool,
}

/// Runs `modserve report` on the candidate tiny-abuse-v2 at `url` with `extra` flags and
/// `envs` in its environment.
fn report(config: &Path, url: &str, out: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Run {
    let run = Command::new(env!("CARGO_BIN_EXE_modserve"))
        .env_remove("RUST_LOG")
        .envs(envs.iter().copied())
        .args(["report", "--config"])
        .arg(config)
        .args(["--prometheus", url, "--task", "abuse", "--candidate", "tiny-abuse-v2", "--window", "15m"])
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    Run {
        code: run.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&run.stderr).into_owned(),
        built: out.join("launch-report.json").is_file(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_reads_prometheus_behind_tls_with_a_bearer_token_or_basic_auth() {
    let _shared = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(&models()).await;
    let prometheus = Prometheus::start(&[server.metrics_addr]).await;
    let mut client = server.client().await;
    let n = 12;
    for i in 0..n {
        client.classify(request(vec![review(&format!("a{i}"), "you idiot")])).await.unwrap();
    }
    let compared = r#"sum(modserve_shadow_comparisons_total{shadow_model="tiny-abuse-v2"})"#;
    assert_eq!(prometheus.wait_for(compared, n as f64).await.map(|(_, v)| v), Some(n as f64));

    let (ca, cert, key) = certificates("prometheus-ca");
    let (wrong_ca, _, _) = certificates("another-ca");
    let nginx = start_nginx(dir.path(), prometheus.addr, &cert, &key).await;
    let file = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.display().to_string()
    };
    let ca = file("ca.pem", &ca);
    let wrong_ca = file("wrong-ca.pem", &wrong_ca);
    let token = file("token", &format!("{TOKEN}\n"));
    let wrong_token = file("wrong-token", "guess\n");
    let password = file("password", &format!("{PASSWORD}\n"));
    let config = PathBuf::from(file("report.toml", &models()));
    let base = format!("https://{}", nginx.addr);
    let runs = std::cell::Cell::new(0);
    let out = || {
        runs.set(runs.get() + 1);
        dir.path().join(format!("out-{}", runs.get()))
    };
    let url = |prefix: &str| format!("{base}/{prefix}");
    let ca_flag = ["--prometheus-ca-file", ca.as_str()];

    tokio::task::block_in_place(|| {
        // TLS with the CA that signed the certificate: the report is built (GO or NO-GO).
        let built = |run: &Run, what: &str| {
            assert!(run.built && (run.code == 0 || run.code == 2), "{what}: exit {}, {}", run.code, run.stderr);
        };
        let refused = |run: &Run, what: &str, wants: &[&str]| {
            assert_eq!((run.code, run.built), (1, false), "{what}: {}", run.stderr);
            for want in wants {
                assert!(run.stderr.contains(want), "{what}: {want:?} missing from: {}", run.stderr);
            }
        };
        built(&report(&config, &url("open"), &out(), &ca_flag, &[]), "https with the CA");

        // Another CA: refused, naming TLS, the address and the flag to fix.
        let run = report(&config, &url("open"), &out(), &["--prometheus-ca-file", &wrong_ca], &[]);
        refused(
            &run,
            "wrong CA",
            &[&format!("TLS with {} failed", nginx.addr), "UnknownIssuer", "--prometheus-ca-file"],
        );
        // No CA file: the built-in public roots do not know a private CA either.
        let run = report(&config, &url("open"), &out(), &[], &[]);
        refused(&run, "no CA file", &["UnknownIssuer"]);

        // Bearer token, from a file and from an environment variable.
        fn with<'a>(ca_flag: &[&'a str], flags: &[&'a str]) -> Vec<&'a str> {
            [ca_flag, flags].concat()
        }
        built(
            &report(&config, &url("bearer"), &out(), &with(&ca_flag, &["--prometheus-bearer-token-file", &token]), &[]),
            "bearer token from a file",
        );
        built(
            &report(
                &config,
                &url("bearer"),
                &out(),
                &with(&ca_flag, &["--prometheus-bearer-token-env", "PROM_TOKEN"]),
                &[("PROM_TOKEN", TOKEN)],
            ),
            "bearer token from a variable",
        );
        // No token, a wrong one, an unset variable, a missing file.
        let run = report(&config, &url("bearer"), &out(), &with(&ca_flag, &[]), &[]);
        refused(&run, "no token", &["HTTP 401", "Prometheus wants credentials", "--prometheus-bearer-token-file"]);
        let run = report(
            &config,
            &url("bearer"),
            &out(),
            &with(&ca_flag, &["--prometheus-bearer-token-file", &wrong_token]),
            &[],
        );
        refused(&run, "wrong token", &["HTTP 401", "Prometheus refused the credentials sent"]);
        assert!(!run.stderr.contains("guess"), "the token never shows: {}", run.stderr);
        let run = report(
            &config,
            &url("bearer"),
            &out(),
            &with(&ca_flag, &["--prometheus-bearer-token-env", "NO_SUCH_VAR"]),
            &[],
        );
        refused(
            &run,
            "unset variable",
            &["--prometheus-bearer-token-env NO_SUCH_VAR: the environment variable is not set"],
        );
        let missing = dir.path().join("no-token").display().to_string();
        let run = report(
            &config,
            &url("bearer"),
            &out(),
            &with(&ca_flag, &["--prometheus-bearer-token-file", &missing]),
            &[],
        );
        refused(&run, "missing token file", &[&format!("--prometheus-bearer-token-file {missing}: cannot read it")]);

        // Basic auth: right and wrong password.
        built(
            &report(
                &config,
                &url("basic"),
                &out(),
                &with(&ca_flag, &["--prometheus-user", USER, "--prometheus-password-file", &password]),
                &[],
            ),
            "basic auth",
        );
        let run = report(
            &config,
            &url("basic"),
            &out(),
            &with(&ca_flag, &["--prometheus-user", USER, "--prometheus-password-env", "PROM_PASSWORD"]),
            &[("PROM_PASSWORD", "wrong")],
        );
        refused(&run, "wrong password", &["HTTP 401", "Prometheus refused the credentials sent"]);
    });
    assert_eq!(runs.get(), 11);
    drop(nginx);
    drop(prometheus);
    server.stop().await;
}
