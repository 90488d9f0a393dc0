//! A blocking client for the Prometheus HTTP query API: `GET /api/v1/query` through `ureq`
//! (HTTP/1.1, rustls), and the JSON envelope parsed into typed results. The URL is http or https
//! and may carry a path prefix (`https://prom.internal/prom`); `Access` adds a CA file and a
//! bearer token or basic auth, as Prometheus, Thanos, Mimir and hosted endpoints want.

mod access;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

pub use access::{Access, AccessError, Credentials, Secret};

/// The most of an answer read: a year of 15 s samples for a few hundred series fits easily.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Why a query got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("cannot connect to {addr}: {error}")]
    Connect { addr: String, error: String },
    #[error("TLS with {addr} failed: {error}")]
    Tls { addr: String, error: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection to {addr} failed: {error}")]
    Io { addr: String, error: String },
    #[error("HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("Prometheus answered {error_type}: {error}")]
    Api { error_type: String, error: String },
    #[error("unreadable answer: {0}")]
    BadResponse(String),
    #[error("expected a {expected} result, got a {got}")]
    UnexpectedType { expected: &'static str, got: &'static str },
}

/// Why a client could not be made: the URL, or the access settings.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Url(String),
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// A Prometheus server, parsed from a URL like `https://prom.internal:9090[/prefix]`.
#[derive(Clone)]
pub struct Client {
    /// `http` or `https`.
    scheme: &'static str,
    /// `host[:port]` as written in the URL, for the request and for error messages.
    authority: String,
    /// The path prefix without a trailing slash ("" or "/prom").
    prefix: String,
    timeout: Duration,
    /// The `Authorization` header value, when credentials are configured. Never printed.
    authorization: Option<String>,
    /// TLS trust and the time limit; keeps the connection alive between the queries of a report.
    agent: ureq::Agent,
}

/// Redacts the credentials.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &format_args!("{}://{}{}", self.scheme, self.authority, self.prefix))
            .field("timeout", &self.timeout)
            .field("authorization", &self.authorization.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Labels of a series.
pub type Labels = BTreeMap<String, String>;

/// The `data` of a successful answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
pub enum Data {
    Vector(Vec<Sample>),
    Matrix(Vec<Series>),
    Scalar(Point),
    String((f64, String)),
}

/// One series' value at the query time (an instant vector element).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Sample {
    pub metric: Labels,
    pub value: Point,
}

/// One series' samples over a range (a range vector element), oldest first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Series {
    pub metric: Labels,
    #[serde(default)]
    pub values: Vec<Point>,
}

/// `[unix seconds, "value"]`; values are strings so "NaN" and "+Inf" survive JSON.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "(f64, String)")]
pub struct Point {
    pub time: f64,
    pub value: f64,
}

impl TryFrom<(f64, String)> for Point {
    type Error = String;

    fn try_from((time, value): (f64, String)) -> Result<Self, Self::Error> {
        let value = value.parse().map_err(|_| format!("sample value {value:?} is not a number"))?;
        Ok(Point { time, value })
    }
}

#[derive(Debug, Deserialize)]
struct Envelope {
    status: String,
    data: Option<Data>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

impl Data {
    fn kind(&self) -> &'static str {
        match self {
            Data::Vector(_) => "vector",
            Data::Matrix(_) => "matrix",
            Data::Scalar(_) => "scalar",
            Data::String(_) => "string",
        }
    }
}

// === impl Client ===

impl Client {
    /// Parses `http[s]://host[:port][/prefix]` and reads the access settings (CA file, secret);
    /// each error says what is wrong and names the flag, file or variable.
    pub fn new(url: &str, timeout: Duration, access: &Access) -> Result<Client, ClientError> {
        let (scheme, rest) = match url.split_once("://") {
            Some(("http", rest)) => ("http", rest),
            Some(("https", rest)) => ("https", rest),
            _ => return Err(ClientError::Url("not a URL like http://127.0.0.1:9090 or https://prom.internal".into())),
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() {
            return Err(ClientError::Url("the URL needs a host".into()));
        }
        if authority.contains('@') {
            return Err(ClientError::Url(
                "user info in the URL is not read; use --prometheus-user with --prometheus-password-file or -env"
                    .into(),
            ));
        }
        if path.contains(['?', '#']) {
            return Err(ClientError::Url("the URL may have a path prefix but no query or fragment".into()));
        }
        if scheme == "http" && access.ca_file.is_some() {
            return Err(AccessError::CaWithoutTls.into());
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(certs) = access.ca_certificates()? {
            let certs: Vec<_> = certs.iter().map(|der| ureq::tls::Certificate::from_der(der).to_owned()).collect();
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .timeout_global(Some(timeout))
            // Statuses are read here: Prometheus puts its error envelope in 400, 422 and 503.
            .http_status_as_error(false)
            // A redirect is reported, not followed: the credentials go to the URL given, only.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("modserve-report/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Client {
            scheme,
            authority: authority.to_string(),
            prefix: path.trim_end_matches('/').to_string(),
            timeout,
            authorization: access.authorization()?,
            agent,
        })
    }

    /// Runs an instant query at `time`.
    pub fn query(&self, promql: &str, time: SystemTime) -> Result<Data, QueryError> {
        let at = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let target = format!(
            "{}/api/v1/query?query={}&time={}.{:03}",
            self.prefix,
            url_encode(promql),
            at.as_secs(),
            at.subsec_millis()
        );
        let (status, body) = self.get(&target)?;
        parse_answer(status, &body).map_err(|e| self.explain(e))
    }

    /// Runs a query that must give a range vector (a range selector like `m[1h]`).
    pub fn query_matrix(&self, promql: &str, time: SystemTime) -> Result<Vec<Series>, QueryError> {
        match self.query(promql, time)? {
            Data::Matrix(series) => Ok(series),
            other => Err(QueryError::UnexpectedType { expected: "matrix", got: other.kind() }),
        }
    }

    /// Runs a query that must give an instant vector.
    pub fn query_vector(&self, promql: &str, time: SystemTime) -> Result<Vec<Sample>, QueryError> {
        match self.query(promql, time)? {
            Data::Vector(samples) => Ok(samples),
            other => Err(QueryError::UnexpectedType { expected: "vector", got: other.kind() }),
        }
    }

    /// One GET: the status code and the whole body (at most `MAX_RESPONSE_BYTES`).
    fn get(&self, target: &str) -> Result<(u16, Vec<u8>), QueryError> {
        let url = format!("{}://{}{target}", self.scheme, self.authority);
        let mut request = self.agent.get(&url).header("Accept", "application/json");
        if let Some(value) = &self.authorization {
            request = request.header("Authorization", value);
        }
        let mut response = request.call().map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        if response.status().is_redirection() {
            let to = response.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("nowhere");
            return Err(QueryError::Http {
                status,
                message: format!("redirected to {to}: give the URL Prometheus answers on in --prometheus"),
            });
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES as u64)
            .read_to_vec()
            .map_err(|e| self.transport_error(e))?;
        Ok((status, body))
    }

    /// A transport error in words that say what to check.
    fn transport_error(&self, error: ureq::Error) -> QueryError {
        let addr = self.authority.clone();
        match error {
            ureq::Error::Timeout(_) => QueryError::Timeout(self.timeout),
            ureq::Error::HostNotFound => {
                QueryError::Connect { addr, error: "the host name resolved to no address".into() }
            }
            ureq::Error::ConnectionFailed => QueryError::Connect { addr, error: "connection failed".into() },
            ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                QueryError::Connect { addr, error: e.to_string() }
            }
            ureq::Error::Io(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
                QueryError::Timeout(self.timeout)
            }
            ureq::Error::Rustls(e) => QueryError::Tls { addr, error: tls_hint(&e) },
            // rustls reports a refused certificate through the stream, as an io::Error.
            ureq::Error::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
                let inner = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
                QueryError::Tls { addr, error: inner.map_or_else(|| e.to_string(), tls_hint) }
            }
            ureq::Error::Tls(e) => QueryError::Tls { addr, error: e.to_string() },
            ureq::Error::BodyExceedsLimit(_) => {
                QueryError::BadResponse(format!("the answer is over {MAX_RESPONSE_BYTES} bytes"))
            }
            ureq::Error::Io(e) => QueryError::Io { addr, error: e.to_string() },
            other => QueryError::Io { addr, error: other.to_string() },
        }
    }

    /// Adds what to check to a 401 or 403: the credentials missing, or refused.
    fn explain(&self, error: QueryError) -> QueryError {
        match error {
            QueryError::Http { status: status @ (401 | 403), message } => {
                let hint = if self.authorization.is_some() {
                    "Prometheus refused the credentials sent: check the token or the user and password"
                } else {
                    "Prometheus wants credentials: --prometheus-bearer-token-file or -env, or \
                     --prometheus-user with --prometheus-password-file or -env"
                };
                QueryError::Http { status, message: format!("{message} ({hint})") }
            }
            other => other,
        }
    }
}

/// A rustls error, with what to check for the usual certificate problems.
fn tls_hint(error: &rustls::Error) -> String {
    use rustls::CertificateError::{Expired, ExpiredContext, NotValidForName, NotValidForNameContext, UnknownIssuer};
    let hint = match error {
        rustls::Error::InvalidCertificate(UnknownIssuer) => {
            " (the server's certificate is not signed by a trusted CA: give that CA with --prometheus-ca-file)"
        }
        rustls::Error::InvalidCertificate(NotValidForName | NotValidForNameContext { .. }) => {
            " (the certificate does not name this host: use a host name it was issued for)"
        }
        rustls::Error::InvalidCertificate(Expired | ExpiredContext { .. }) => " (the server's certificate has expired)",
        _ => "",
    };
    format!("{error}{hint}")
}

/// Turns a status and body into data, or the most precise error the answer allows: Prometheus
/// sends its JSON error envelope with 400, 422 and 503 too.
pub fn parse_answer(status: u16, body: &[u8]) -> Result<Data, QueryError> {
    let envelope = serde_json::from_slice::<Envelope>(body);
    match envelope {
        Ok(e) if e.status == "success" && status == 200 => {
            e.data.ok_or_else(|| QueryError::BadResponse("status success but no data".into()))
        }
        Ok(e) if e.status == "error" || e.error.is_some() => Err(QueryError::Api {
            error_type: e.error_type.unwrap_or_else(|| format!("HTTP {status}")),
            error: e.error.unwrap_or_default(),
        }),
        Ok(e) if status == 200 => Err(QueryError::BadResponse(format!("unknown status {:?}", e.status))),
        Err(e) if status == 200 => Err(QueryError::BadResponse(format!("not Prometheus API JSON: {e}"))),
        _ if status == 404 => {
            Err(QueryError::Http { status, message: format!("{} (is the URL's path prefix right?)", excerpt(body)) })
        }
        _ => Err(QueryError::Http { status, message: excerpt(body) }),
    }
}

/// The start of a body, on one line, for error messages.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return "(empty body)".into();
    }
    super::format::cut(&text, 200)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A PromQL string literal (double-quoted, escaped).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests;
