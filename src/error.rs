//! The error a classification can end with, and its closed set of kinds.
//!
//! Errors are mapped to gRPC status codes in exactly one place (`grpc::status`); this module knows
//! nothing of tonic. `ErrorKind` is the bounded label set used in metrics.

use std::fmt;

/// Why a request (or one task of it) could not be answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request broke a rule of the API; `field` is a path such as `reviews[3].text`.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// A model's queue was full: the caller should back off and retry.
    #[error("model {model} is overloaded: its queue is full ({limit}); retry with backoff")]
    QueueFull { model: String, limit: String },
    /// The verdict queue was full: the caller should back off and retry the call.
    #[error("the feedback queue is full ({limit}); retry with backoff")]
    FeedbackQueueFull { limit: String },
    /// The caller's deadline passed; the text says where ("before inference on model X").
    /// Work dropped this way never reaches inference.
    #[error("deadline exceeded {0}")]
    DeadlineExceeded(String),
    /// The model failed to produce valid scores (runtime error, bad shape, NaN, panic).
    #[error("inference failed on model {model}: {reason}")]
    Inference { model: String, reason: crate::inference::InferenceError },
    /// The server is starting (models not loaded yet) or shutting down.
    #[error("{0}")]
    Unavailable(&'static str),
}

/// The closed set of error kinds, for metric labels and status mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidArgument,
    QueueFull,
    DeadlineExceeded,
    Inference,
    Unavailable,
}

/// A caller's string as an error message may quote it: at most `EXCERPT_CHARS` characters, then
/// its full length. Messages travel back in `grpc-message`, which clients bound; an unbounded
/// echo turns a 1 MiB bad value into a transport error instead of a clear INVALID_ARGUMENT.
pub fn excerpt(value: &str) -> String {
    const EXCERPT_CHARS: usize = 64;
    match value.char_indices().nth(EXCERPT_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &value[..cut], value.len()),
    }
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::QueueFull { .. } | Error::FeedbackQueueFull { .. } => ErrorKind::QueueFull,
            Error::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            Error::Inference { .. } => ErrorKind::Inference,
            Error::Unavailable(_) => ErrorKind::Unavailable,
        }
    }
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::QueueFull => "queue_full",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::Inference => "inference",
            ErrorKind::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
