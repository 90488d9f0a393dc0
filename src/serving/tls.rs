//! TLS for the gRPC, Admin and HTTP/JSON listeners (one certificate, two ALPN offers): rustls, with optional client certificates (mTLS), and
//! certificates reloaded when their files change.
//!
//! cert-manager and similar tools rotate certificates by rewriting the files in place, so a
//! watcher re-reads them every `tls.watch_interval` and swaps the server config when their
//! content changes. Connections that are already open keep the certificate they started with;
//! new ones get the new one. A certificate that does not load is reported (log and metric) and
//! the previous one keeps serving: a bad rotation never takes the listener down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};

pub use crate::config::TlsConfig;
use crate::metrics;
use crate::shutdown::ShutdownSignal;

/// Why a certificate set could not be loaded. The message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path}: cannot read: {source}")]
    Read { key: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{key} {path}: no PEM {what} found")]
    Empty { key: &'static str, path: PathBuf, what: &'static str },
    #[error("{key} {path}: not valid PEM: {reason}")]
    Pem { key: &'static str, path: PathBuf, reason: String },
    #[error("tls.client_ca_file {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("tls.cert_file and tls.key_file: {0} (does the key belong to the certificate?)")]
    Config(rustls::Error),
}

/// The current server configs, swapped on rotation: the same certificate, offered as HTTP/2 to
/// gRPC callers and as HTTP/1.1 to the HTTP/JSON API's.
pub struct Tls {
    config: TlsConfig,
    current: ArcSwap<rustls::ServerConfig>,
    current_http: ArcSwap<rustls::ServerConfig>,
    /// What the watcher has seen of the files.
    seen: Mutex<Seen>,
}

/// What the watcher has seen: the set in use, and a set that would not load.
struct Seen {
    /// sha256 over the three files' contents, to see rotations.
    loaded: [u8; 32],
    /// The set (its sha256, or that of the read error) that did not load, and whether it has
    /// been reported.
    failing: Option<([u8; 32], bool)>,
}

impl Tls {
    /// Loads the files; fails naming the file at fault.
    pub fn load(config: TlsConfig) -> Result<Tls, TlsError> {
        let files = read_files(&config)?;
        let server = server_config(&files, &config)?;
        Ok(Tls {
            seen: Mutex::new(Seen { loaded: files.fingerprint(), failing: None }),
            current_http: ArcSwap::from_pointee(http1(&server)),
            current: ArcSwap::from_pointee(server),
            config,
        })
    }

    /// The acceptor for a new connection to the HTTP/JSON API (HTTP/1.1).
    pub fn http_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current_http.load_full())
    }

    /// The acceptor for a new connection: the certificate current at this moment.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.config.client_ca_file.is_some()
    }

    /// Re-reads the files; swaps the config if their content changed and it loads. Returns
    /// whether a new config was installed. On error the old config stays.
    ///
    /// A set that does not load is an error only once the next check finds the same set, and
    /// then not again until the files change: a rotation that writes the certificate and the
    /// key one after the other (or rewrites a file in place) shows a mismatched or partial set
    /// between its writes, and that is no failure to page anyone about.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (fingerprint, server) = match read_files(&self.config) {
            Ok(files) => {
                let fingerprint = files.fingerprint();
                if fingerprint == seen.loaded {
                    seen.failing = None;
                    return Ok(false);
                }
                // Reported already: building it again would fail the same way.
                if seen.failing == Some((fingerprint, true)) {
                    return Ok(false);
                }
                (fingerprint, server_config(&files, &self.config))
            }
            Err(e) => (Sha256::digest(e.to_string()).into(), Err(e)),
        };
        match server {
            Ok(server) => {
                *seen = Seen { loaded: fingerprint, failing: None };
                self.current_http.store(Arc::new(http1(&server)));
                self.current.store(Arc::new(server));
                Ok(true)
            }
            Err(e) => match seen.failing {
                // Found at the last check too, so it is what the files hold: report it, once.
                Some((failing, false)) if failing == fingerprint => {
                    seen.failing = Some((fingerprint, true));
                    Err(e)
                }
                Some((failing, true)) if failing == fingerprint => Ok(false),
                // First sight: perhaps a rotation between its writes; the next check tells.
                _ => {
                    seen.failing = Some((fingerprint, false));
                    Ok(false)
                }
            },
        }
    }
}

/// Checks the files every `watch_interval` until shutdown; logs and counts each outcome.
pub async fn watch(tls: Arc<Tls>, shutdown: ShutdownSignal) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(tls.config.watch_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let t = tls.clone();
        let outcome = tokio::task::spawn_blocking(move || t.reload_if_changed()).await;
        match outcome {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => {
                metrics::tls_reloaded(true);
                tracing::info!(cert = %tls.config.cert_file.display(), "TLS certificate reloaded; new connections use it");
            }
            Ok(Err(e)) => {
                metrics::tls_reloaded(false);
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one keeps serving");
            }
            Err(e) => tracing::error!(error = %e, "TLS reload panicked; the previous certificate keeps serving"),
        }
    }
}

struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            let part = part.map_or(&[][..], Vec::as_slice);
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize().into()
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { key, path: path.to_path_buf(), source })
}

fn read_files(config: &TlsConfig) -> Result<Files, TlsError> {
    Ok(Files {
        cert: read("tls.cert_file", &config.cert_file)?,
        key: read("tls.key_file", &config.key_file)?,
        client_ca: config.client_ca_file.as_deref().map(|p| read("tls.client_ca_file", p)).transpose()?,
    })
}

fn certificates(key: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Pem {
        key,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { key, path: path.to_path_buf(), what: "certificate" });
    }
    Ok(certs)
}

/// `grpc`'s config, offering HTTP/1.1 instead of HTTP/2: a client that offers both (curl does)
/// must not be told h2 by a listener that speaks HTTP/1.1 only.
fn http1(grpc: &rustls::ServerConfig) -> rustls::ServerConfig {
    let mut config = grpc.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Builds the rustls config from the files' contents; `paths` only names them in errors.
fn server_config(files: &Files, paths: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    let certs = certificates("tls.cert_file", &paths.cert_file, &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::Empty { key: "tls.key_file", path: paths.key_file.clone(), what: "private key" }
        }
        e => TlsError::Pem { key: "tls.key_file", path: paths.key_file.clone(), reason: e.to_string() },
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let ca_path = paths.client_ca_file.clone().unwrap_or_default();
            let ca_error = |reason: String| TlsError::ClientCa { path: ca_path.clone(), reason };
            let mut roots = RootCertStore::empty();
            for cert in certificates("tls.client_ca_file", &ca_path, pem)? {
                roots.add(cert).map_err(|e| ca_error(format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ca_error(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(TlsError::Config)?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A self-signed certificate for localhost: (certificate PEM, key PEM).
    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_set_that_does_not_load_is_reported_once_the_next_check_finds_it_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
        let first = pair();
        std::fs::write(&cert, &first.0).unwrap();
        std::fs::write(&key, &first.1).unwrap();
        let config = TlsConfig {
            cert_file: cert.clone(),
            key_file: key.clone(),
            client_ca_file: None,
            watch_interval: Duration::from_secs(1),
        };
        let tls = Tls::load(config).unwrap();
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed");

        // A rotation seen between its two writes: the new certificate beside the old key.
        let next = pair();
        std::fs::write(&cert, &next.0).unwrap();
        assert!(!tls.reload_if_changed().unwrap(), "a mismatched pair is not reported on first sight");
        std::fs::write(&key, &next.1).unwrap();
        assert!(tls.reload_if_changed().unwrap(), "the whole pair loads");

        // A pair that stays mismatched: reported at the second check, and only then.
        std::fs::write(&key, pair().1).unwrap();
        assert!(!tls.reload_if_changed().unwrap());
        let e = tls.reload_if_changed().unwrap_err();
        assert!(e.to_string().contains("does the key belong to the certificate?"), "{e}");
        assert!(!tls.reload_if_changed().unwrap(), "reported once");

        // A key file that is gone: the same, naming the file.
        std::fs::remove_file(&key).unwrap();
        assert!(!tls.reload_if_changed().unwrap());
        let e = tls.reload_if_changed().unwrap_err();
        assert!(matches!(e, TlsError::Read { key: "tls.key_file", .. }), "{e}");
        assert!(!tls.reload_if_changed().unwrap(), "reported once");

        // Back to the pair in use: nothing to load, and a later bad set is new again.
        std::fs::write(&key, &next.1).unwrap();
        assert!(!tls.reload_if_changed().unwrap());
        std::fs::remove_file(&key).unwrap();
        assert!(!tls.reload_if_changed().unwrap());
        assert!(tls.reload_if_changed().is_err());
    }
}
