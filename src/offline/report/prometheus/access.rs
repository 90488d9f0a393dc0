//! How the report reaches a Prometheus beyond its URL: the CA that signs its certificate
//! (https) and the credentials it wants (a bearer token, or basic auth). Each secret comes from a
//! file or from an environment variable, named on the command line and read once, when the
//! client is made; the error for a missing or empty one names the flag and the file or variable.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Where a secret is read from. Never the secret itself, so this is safe to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// A file whose content (trailing whitespace and newline cut) is the secret.
    File(PathBuf),
    /// The name of an environment variable holding the secret.
    Env(String),
}

/// The credentials sent with every query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `Authorization: Basic base64(user:password)`.
    Basic { user: String, password: Secret },
}

/// TLS trust and credentials for one Prometheus. The default: the built-in Mozilla roots for
/// https, and no credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// PEM file with the CA certificate(s) trusted for https, instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    pub credentials: Option<Credentials>,
}

/// What is wrong with the access settings; each message names the flag and its file or
/// variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    #[error("{flag} {}: cannot read it: {error}", path.display())]
    Unreadable { flag: &'static str, path: PathBuf, error: String },
    #[error("{flag} {}: the file is empty", path.display())]
    EmptyFile { flag: &'static str, path: PathBuf },
    #[error("{flag} {name}: the environment variable is not set (or empty)")]
    EnvUnset { flag: &'static str, name: String },
    #[error("{flag} {name}: the environment variable is not valid UTF-8")]
    EnvNotUnicode { flag: &'static str, name: String },
    #[error("{flag}: the secret holds a line break or a control character; one line is expected")]
    NotOneLine { flag: &'static str },
    #[error("--prometheus-user {user:?}: a user name may not contain ':' (basic auth joins user:password)")]
    BadUser { user: String },
    #[error("--prometheus-ca-file {}: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error("--prometheus-ca-file is set but the URL is http://; use an https:// URL")]
    CaWithoutTls,
}

/// The flag that names a secret's source, for error messages.
fn flag(credentials: &Credentials, secret: &Secret) -> &'static str {
    match (credentials, secret) {
        (Credentials::Bearer(_), Secret::File(_)) => "--prometheus-bearer-token-file",
        (Credentials::Bearer(_), Secret::Env(_)) => "--prometheus-bearer-token-env",
        (Credentials::Basic { .. }, Secret::File(_)) => "--prometheus-password-file",
        (Credentials::Basic { .. }, Secret::Env(_)) => "--prometheus-password-env",
    }
}

// === impl Access ===

impl Access {
    /// The `Authorization` header value, with the secret read from its file or variable.
    pub fn authorization(&self) -> Result<Option<String>, AccessError> {
        let Some(credentials) = &self.credentials else { return Ok(None) };
        Ok(Some(match credentials {
            Credentials::Bearer(secret) => format!("Bearer {}", read_secret(flag(credentials, secret), secret)?),
            Credentials::Basic { user, password } => {
                if user.contains(':') {
                    return Err(AccessError::BadUser { user: user.clone() });
                }
                let password = read_secret(flag(credentials, password), password)?;
                format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
            }
        }))
    }

    /// The CA certificates of `ca_file` (DER), or `None` for the built-in roots.
    pub fn ca_certificates(&self) -> Result<Option<Vec<Vec<u8>>>, AccessError> {
        let Some(path) = &self.ca_file else { return Ok(None) };
        let pem = std::fs::read(path).map_err(|e| AccessError::BadCa { path: path.clone(), reason: e.to_string() })?;
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => certs.push(cert.der().to_vec()),
                Ok(_) => {}
                Err(e) => return Err(AccessError::BadCa { path: path.clone(), reason: format!("not PEM: {e}") }),
            }
        }
        if certs.is_empty() {
            return Err(AccessError::BadCa { path: path.clone(), reason: "no PEM certificate in it".into() });
        }
        Ok(Some(certs))
    }
}

/// Reads a secret: one line, trailing whitespace cut, never empty.
fn read_secret(flag: &'static str, secret: &Secret) -> Result<String, AccessError> {
    let value = match secret {
        Secret::File(path) => read_file(flag, path)?,
        Secret::Env(name) => match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => v,
            Ok(_) | Err(std::env::VarError::NotPresent) => {
                return Err(AccessError::EnvUnset { flag, name: name.clone() });
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(AccessError::EnvNotUnicode { flag, name: name.clone() });
            }
        },
    };
    let value = value.trim_end();
    if value.chars().any(char::is_control) {
        return Err(AccessError::NotOneLine { flag });
    }
    Ok(value.to_string())
}

fn read_file(flag: &'static str, path: &Path) -> Result<String, AccessError> {
    let text = std::fs::read_to_string(path).map_err(|e| AccessError::Unreadable {
        flag,
        path: path.to_path_buf(),
        error: e.to_string(),
    })?;
    if text.trim().is_empty() {
        return Err(AccessError::EmptyFile { flag, path: path.to_path_buf() });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_access_reads_secrets_and_names_the_flag_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let bearer = Access { ca_file: None, credentials: Some(Credentials::Bearer(Secret::File(token.clone()))) };
        assert_eq!(bearer.authorization().unwrap().as_deref(), Some("Bearer s3cret"));

        let missing = dir.path().join("nope");
        let e = Access { credentials: Some(Credentials::Bearer(Secret::File(missing.clone()))), ..Access::default() }
            .authorization()
            .unwrap_err();
        assert!(e.to_string().starts_with(&format!("--prometheus-bearer-token-file {}", missing.display())), "{e}");

        std::fs::write(&token, "\n").unwrap();
        let e = bearer.authorization().unwrap_err();
        assert!(e.to_string().ends_with("the file is empty"), "{e}");
        std::fs::write(&token, "a\nb\n").unwrap();
        assert_eq!(
            bearer.authorization().unwrap_err(),
            AccessError::NotOneLine { flag: "--prometheus-bearer-token-file" }
        );

        // An unset variable (PATH-like names are always set; this one never is).
        let name = "MODSERVE_TEST_SURELY_UNSET_7f3a".to_string();
        let basic = Access {
            credentials: Some(Credentials::Basic { user: "u".into(), password: Secret::Env(name.clone()) }),
            ..Access::default()
        };
        let e = basic.authorization().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("--prometheus-password-env {name}: the environment variable is not set (or empty)")
        );

        std::fs::write(&token, "pw\n").unwrap();
        let basic = Access {
            credentials: Some(Credentials::Basic { user: "report".into(), password: Secret::File(token.clone()) }),
            ..Access::default()
        };
        assert_eq!(basic.authorization().unwrap().as_deref(), Some("Basic cmVwb3J0OnB3"));
        let colon = Access {
            credentials: Some(Credentials::Basic { user: "a:b".into(), password: Secret::File(token) }),
            ..Access::default()
        };
        assert!(matches!(colon.authorization(), Err(AccessError::BadUser { .. })));
        assert_eq!(Access::default().authorization().unwrap(), None);
    }

    #[test]
    fn report_access_refuses_a_ca_file_without_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let access = Access { ca_file: Some(ca.clone()), credentials: None };
        let e = access.ca_certificates().unwrap_err();
        assert_eq!(e.to_string(), format!("--prometheus-ca-file {}: no PEM certificate in it", ca.display()));
        let e = Access { ca_file: Some(dir.path().join("none.pem")), credentials: None }.ca_certificates().unwrap_err();
        assert!(e.to_string().contains("cannot read") || e.to_string().contains("No such file"), "{e}");
        assert_eq!(Access::default().ca_certificates().unwrap(), None);
    }
}
