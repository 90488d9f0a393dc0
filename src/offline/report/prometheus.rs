//! A minimal blocking client for the Prometheus HTTP query API: `GET /api/v1/query` over
//! `std::net::TcpStream`, HTTP/1.0 so the answer is never chunked (the body runs to EOF), and
//! the JSON envelope parsed into typed results. Plain http only; the URL may carry a path prefix
//! (`http://host:9090/prom`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// The most of an answer read: a year of 15 s samples for a few hundred series fits easily.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Why a query got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("cannot connect to {addr}: {error}")]
    Connect { addr: String, error: std::io::Error },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Io(std::io::Error),
    #[error("HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("Prometheus answered {error_type}: {error}")]
    Api { error_type: String, error: String },
    #[error("unreadable answer: {0}")]
    BadResponse(String),
    #[error("expected a {expected} result, got a {got}")]
    UnexpectedType { expected: &'static str, got: &'static str },
}

/// A Prometheus server, parsed from a URL like `http://127.0.0.1:9090[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// `host:port` to connect to, also sent as the Host header.
    authority: String,
    /// The path prefix without a trailing slash ("" or "/prom").
    prefix: String,
    timeout: Duration,
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
    /// Parses `http://host[:port][/prefix]`; the error says what is wrong with the URL.
    pub fn new(url: &str, timeout: Duration) -> Result<Client, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            if url.starts_with("https://") {
                "https is not supported; use an http:// URL (e.g. through a local proxy)".to_string()
            } else {
                "not a URL like http://127.0.0.1:9090".to_string()
            }
        })?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() || authority.contains('@') {
            return Err("the URL needs a host (and no user info)".into());
        }
        if path.contains(['?', '#']) {
            return Err("the URL may have a path prefix but no query or fragment".into());
        }
        let has_port = match authority.rfind(']') {
            Some(bracket) => authority[bracket..].contains(':'),
            None => authority.contains(':'),
        };
        let authority = if has_port { authority.to_string() } else { format!("{authority}:80") };
        Ok(Client { authority, prefix: path.trim_end_matches('/').to_string(), timeout })
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
        parse_answer(status, &body)
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

    /// One HTTP/1.0 GET: the status code and the whole body.
    fn get(&self, target: &str) -> Result<(u16, Vec<u8>), QueryError> {
        let mut stream = self.connect()?;
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => QueryError::Timeout(self.timeout),
            _ => QueryError::Io(e),
        };
        stream.set_read_timeout(Some(self.timeout)).map_err(QueryError::Io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(QueryError::Io)?;
        let request = format!(
            "GET {target} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: modserve-report/{}\r\n\r\n",
            self.authority,
            env!("CARGO_PKG_VERSION")
        );
        stream.write_all(request.as_bytes()).map_err(io)?;
        let mut raw = Vec::new();
        (&mut stream).take(MAX_RESPONSE_BYTES as u64 + 1).read_to_end(&mut raw).map_err(io)?;
        if raw.len() > MAX_RESPONSE_BYTES {
            return Err(QueryError::BadResponse(format!("the answer is over {MAX_RESPONSE_BYTES} bytes")));
        }
        split_response(&raw)
    }

    fn connect(&self) -> Result<TcpStream, QueryError> {
        let connect_error = |error| QueryError::Connect { addr: self.authority.clone(), error };
        let addrs = self.authority.to_socket_addrs().map_err(connect_error)?;
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the host name resolved to no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(connect_error(last))
    }
}

/// Splits a raw HTTP response into its status code and body.
fn split_response(raw: &[u8]) -> Result<(u16, Vec<u8>), QueryError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| QueryError::BadResponse("no complete HTTP header (connection closed early?)".into()))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/"))
        .ok_or_else(|| QueryError::BadResponse(format!("not an HTTP status line: {status_line:?}")))?;
    Ok((status, raw[end + 4..].to_vec()))
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
