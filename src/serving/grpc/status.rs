//! The single place where errors become gRPC status codes.

use tonic::{Code, Status};

use crate::error::{Error, ErrorKind};

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        Status::new(code(err.kind()), err.to_string())
    }
}

/// tonic answers a request body that is not valid protobuf INTERNAL, since its codec cannot tell
/// a caller's bytes from a server fault. It is the caller's mistake: INVALID_ARGUMENT, and
/// counted like any other refused call.
/// Our codec's refusal of a message with too many entries is one too (`codec`).
pub fn is_decode_failure(code: Code, message: &str) -> bool {
    (code == Code::Internal && message.starts_with("failed to decode Protobuf message"))
        || (code == Code::InvalidArgument && message.starts_with(super::codec::REFUSED_BEFORE_DECODING))
}

/// The `method` label of a counted call's path, for calls answered before their handler ran.
pub fn counted_method(path: &str) -> Option<&'static str> {
    match path {
        "/modserve.v1.Moderation/Classify" => Some("Classify"),
        "/modserve.v1.Moderation/ClassifyStream" => Some("ClassifyStream"),
        "/modserve.v1.Feedback/SubmitVerdicts" => Some("SubmitVerdicts"),
        _ => None,
    }
}

/// The status code for each error kind.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::QueueFull => Code::ResourceExhausted,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Inference => Code::Internal,
        ErrorKind::Unavailable => Code::Unavailable,
    }
}

/// The canonical name of a status code, for metric labels.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
