//! The Prometheus client: URL handling, answer parsing from captured responses, and the HTTP
//! exchange end to end against a one-shot server on 127.0.0.1:0.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::*;

/// A range-selector answer as Prometheus 3 sends it (two replicas of one counter).
const MATRIX: &str = r#"{"status":"success","data":{"resultType":"matrix","result":[
 {"metric":{"__name__":"modserve_shadow_reviews_total","instance":"a:9464","job":"modserve","outcome":"compared"},
  "values":[[1795000000,"3"],[1795000015.5,"7"],[1795000030,"2"]]},
 {"metric":{"__name__":"modserve_shadow_reviews_total","instance":"b:9464","job":"modserve","outcome":"compared"},
  "values":[[1795000001,"0"]]}]}}"#;

const VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[
 {"metric":{},"value":[1795000030.123,"0.0125"]},{"metric":{"role":"x"},"value":[1795000030.123,"NaN"]},
 {"metric":{"le":"+Inf"},"value":[1795000030.123,"+Inf"]}]},"warnings":["w"]}"#;

const BAD_QUERY: &str = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unexpected \"}\""}"#;

fn client(url: &str) -> Result<Client, ClientError> {
    Client::new(url, Duration::from_secs(10), &Access::default())
}

#[test]
fn report_client_parses_urls_with_ports_and_path_prefixes() {
    let parts = |c: Client| (c.scheme, c.authority, c.prefix);
    assert_eq!(parts(client("http://127.0.0.1:9090").unwrap()), ("http", "127.0.0.1:9090".into(), "".into()));
    assert_eq!(
        parts(client("https://prom.internal/prom/").unwrap()),
        ("https", "prom.internal".into(), "/prom".into())
    );
    assert_eq!(parts(client("http://[::1]:9090/a/b").unwrap()), ("http", "[::1]:9090".into(), "/a/b".into()));
    for bad in ["127.0.0.1:9090", "http://", "http://x:9090/?q=1", "ftp://x", "https://u:p@x"] {
        assert!(matches!(client(bad), Err(ClientError::Url(_))), "{bad}");
    }
    assert!(client("https://u:p@x").unwrap_err().to_string().contains("--prometheus-user"));
    let ca = Access { ca_file: Some("ca.pem".into()), credentials: None };
    let e = Client::new("http://x:9090", Duration::from_secs(1), &ca).unwrap_err();
    assert_eq!(e.to_string(), "--prometheus-ca-file is set but the URL is http://; use an https:// URL");
}

#[test]
fn report_client_encodes_queries_and_quotes_label_values() {
    assert_eq!(url_encode("m{a=\"b c\"}[1h]"), "m%7Ba%3D%22b%20c%22%7D%5B1h%5D");
    assert_eq!(url_encode("é+"), "%C3%A9%2B");
    assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
}

#[test]
fn report_client_parses_captured_answers() {
    let Data::Matrix(series) = parse_answer(200, MATRIX.as_bytes()).unwrap() else { panic!("not a matrix") };
    assert_eq!(series.len(), 2);
    assert_eq!(series[0].metric["instance"], "a:9464");
    assert_eq!(series[0].values[1], Point { time: 1795000015.5, value: 7.0 });
    let Data::Vector(samples) = parse_answer(200, VECTOR.as_bytes()).unwrap() else { panic!("not a vector") };
    assert_eq!(samples[0].value.value, 0.0125);
    assert!(samples[1].value.value.is_nan());
    assert_eq!(samples[2].value.value, f64::INFINITY);
    let scalar = parse_answer(200, br#"{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}"#);
    assert_eq!(scalar.unwrap(), Data::Scalar(Point { time: 1.0, value: 2.0 }));
}

#[test]
fn report_client_errors_say_what_prometheus_said() {
    let e = parse_answer(400, BAD_QUERY.as_bytes()).unwrap_err();
    assert!(matches!(e, QueryError::Api { ref error_type, .. } if error_type == "bad_data"), "{e:?}");
    assert!(e.to_string().contains("parse error"), "{e}");
    let e = parse_answer(502, b"<html><body>Bad Gateway</body></html>\n").unwrap_err();
    assert_eq!(e.to_string(), "HTTP 502: <html><body>Bad Gateway</body></html>");
    let e = parse_answer(200, b"{\"status\":\"success\",\"data\":{\"resultType\":\"matrix\",\"result\":[{\"metric\":{},\"values\":[[1,\"x\"]]}]}}");
    assert!(e.unwrap_err().to_string().contains("not a number"));
    assert!(matches!(parse_answer(200, b"hello"), Err(QueryError::BadResponse(_))));
}

/// Serves one connection with `response`, sending back the request head it read.
fn serve_once(response: String) -> (String, mpsc::Receiver<String>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/prom", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        // The request head, read whole so the client's write never fails.
        let mut head = String::new();
        while reader.read_line(&mut head).unwrap() > 0 && !head.ends_with("\r\n\r\n") {}
        tx.send(head.trim_end().to_string()).unwrap();
        let mut stream = reader.into_inner();
        stream.write_all(response.as_bytes()).unwrap();
        // Dropping the stream closes it: the HTTP/1.0 end of the body.
    });
    (url, rx, thread)
}

fn http(status: &str, body: &str) -> String {
    format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

#[test]
fn report_client_queries_over_http_end_to_end() {
    let (url, request, thread) = serve_once(http("200 OK", MATRIX));
    let prom = client(&url).unwrap();
    let time = UNIX_EPOCH + Duration::from_millis(1_795_000_030_250);
    let series = prom.query_matrix("modserve_shadow_reviews_total{task=\"abuse\"}[1h]", time).unwrap();
    thread.join().unwrap();
    assert_eq!(series.len(), 2);
    let head = request.recv().unwrap();
    assert_eq!(
        head.lines().next().unwrap(),
        "GET /prom/api/v1/query?query=modserve_shadow_reviews_total%7Btask%3D%22abuse%22%7D%5B1h%5D&time=1795000030.250 HTTP/1.1"
    );
    assert!(!head.to_ascii_lowercase().contains("authorization"), "{head}");

    // An HTTP/1.0 answer whose body runs to the end of the connection reads too.
    let (url, _request, thread) =
        serve_once(format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{VECTOR}"));
    let samples = client(&url).unwrap().query_vector("up", time).unwrap();
    thread.join().unwrap();
    assert_eq!(samples.len(), 3);
}

#[test]
fn report_client_sends_credentials_and_explains_401() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let access = Access { ca_file: None, credentials: Some(Credentials::Bearer(Secret::File(token))) };
    let (url, request, thread) = serve_once(http("200 OK", VECTOR));
    let client_with_token = Client::new(&url, Duration::from_secs(10), &access).unwrap();
    assert!(!format!("{client_with_token:?}").contains("t0ken"), "Debug redacts the token");
    client_with_token.query_vector("up", SystemTime::now()).unwrap();
    thread.join().unwrap();
    let head = request.recv().unwrap();
    assert!(head.lines().any(|l| l.eq_ignore_ascii_case("authorization: Bearer t0ken")), "{head}");

    let (url, _request, thread) = serve_once(http("401 Unauthorized", "Unauthorized"));
    let e = client(&url).unwrap().query("up", SystemTime::now()).unwrap_err();
    thread.join().unwrap();
    assert!(
        e.to_string()
            .starts_with("HTTP 401: Unauthorized (Prometheus wants credentials: --prometheus-bearer-token-file"),
        "{e}"
    );
    let (url, _request, thread) = serve_once(http("401 Unauthorized", "Unauthorized"));
    let e = Client::new(&url, Duration::from_secs(10), &access).unwrap().query("up", SystemTime::now()).unwrap_err();
    thread.join().unwrap();
    assert!(e.to_string().contains("refused the credentials sent"), "{e}");
}

#[test]
fn report_client_turns_error_answers_into_clear_errors() {
    let (url, _request, thread) = serve_once(http("400 Bad Request", BAD_QUERY));
    let e = client(&url).unwrap().query("m{", SystemTime::now()).unwrap_err();
    thread.join().unwrap();
    assert!(e.to_string().starts_with("Prometheus answered bad_data: invalid parameter"), "{e}");

    let (url, _request, thread) = serve_once(http("503 Service Unavailable", "Service Unavailable"));
    let e = client(&url).unwrap().query("up", SystemTime::now()).unwrap_err();
    thread.join().unwrap();
    assert_eq!(e.to_string(), "HTTP 503: Service Unavailable");

    // A redirect is not followed (the credentials go nowhere else), and says where it pointed.
    let (url, _request, thread) =
        serve_once("HTTP/1.1 302 Found\r\nLocation: https://elsewhere/prom\r\nContent-Length: 0\r\n\r\n".into());
    let e = client(&url).unwrap().query("up", SystemTime::now()).unwrap_err();
    thread.join().unwrap();
    assert!(e.to_string().starts_with("HTTP 302: redirected to https://elsewhere/prom"), "{e}");

    let (url, _request, thread) = serve_once(http("200 OK", VECTOR));
    let e = client(&url).unwrap().query_matrix("up", SystemTime::now()).unwrap_err();
    thread.join().unwrap();
    assert_eq!(e.to_string(), "expected a matrix result, got a vector");

    // Nothing listening: the error names the address.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = client(&format!("http://127.0.0.1:{port}")).unwrap().query("up", SystemTime::now()).unwrap_err();
    assert!(e.to_string().starts_with(&format!("cannot connect to 127.0.0.1:{port}")), "{e}");
}
