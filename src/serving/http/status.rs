//! The one table from status codes to HTTP statuses (docs/http.md shows the same table), and
//! the JSON error body: `{"code": "INVALID_ARGUMENT", "message": "..."}`, the message being
//! the gRPC status message word for word.

use hyper::StatusCode;
use tonic::Code;

use crate::serving::grpc::status::code_name;

/// The HTTP status of each status code. The codes the server answers with are the ones of
/// `grpc::status::code` (errors), the token checks (UNAUTHENTICATED, PERMISSION_DENIED),
/// tonic's body-size check (OUT_OF_RANGE) and the HTTP API's own routing (NOT_FOUND,
/// UNIMPLEMENTED); the others are mapped as Google's HTTP APIs map them.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        // Only a body over `limits.max_message_bytes` is OUT_OF_RANGE here.
        Code::OutOfRange => StatusCode::PAYLOAD_TOO_LARGE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        // A route asked with a method it does not take.
        Code::Unimplemented => StatusCode::METHOD_NOT_ALLOWED,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // nginx's "client closed request": the caller went away.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Internal | Code::Unknown | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON error body of `status`.
pub fn error_body(status: &tonic::Status) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "code": code_name(status.code()), "message": status.message() }))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_maps_to_a_client_or_server_error() {
        use crate::error::ErrorKind::*;
        for kind in [InvalidArgument, QueueFull, DeadlineExceeded, Inference, Unavailable] {
            let status = http_status(crate::serving::grpc::status::code(kind));
            assert!(status.is_client_error() || status.is_server_error(), "{kind}: {status}");
        }
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
    }

    #[test]
    fn the_error_body_carries_the_code_name_and_the_message() {
        let body = error_body(&tonic::Status::invalid_argument("reviews[0].text: must not be empty"));
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["code"], "INVALID_ARGUMENT");
        assert_eq!(value["message"], "reviews[0].text: must not be empty");
    }
}
