//! Handles of the control plane and the listeners: model loads, reloads, TLS, connections and
//! what the transport refused.

use super::*;
use crate::serving::turns::TurnGauges;

/// Records a model's load time.
pub fn model_loaded(model: &str, seconds: f64) {
    gauge!(MODEL_LOAD_SECONDS, label::MODEL => model.to_string()).set(seconds);
}

/// Records a TLS certificate reload.
pub fn tls_reloaded(applied: bool) {
    counter!(TLS_RELOADS_TOTAL, label::RESULT => if applied { "success" } else { "failure" }).increment(1);
}

/// Records a failed TLS handshake on `listener` ("grpc" or "admin").
pub fn tls_handshake_failed(listener: &'static str) {
    counter!(TLS_HANDSHAKE_FAILURES_TOTAL, label::LISTENER => listener).increment(1);
}

/// The open-connections gauge of `listener`.
pub fn connections_open(listener: &'static str) -> Gauge {
    gauge!(CONNECTIONS_OPEN, label::LISTENER => listener)
}

/// The gauge of request bytes being received on `listener`.
pub fn request_bytes_receiving(listener: &'static str) -> Gauge {
    gauge!(REQUEST_BYTES_RECEIVING, label::LISTENER => listener)
}

/// The gauges of Classify calls waiting for a turn and in progress (`serving::turns`).
pub fn turn_gauges() -> TurnGauges {
    TurnGauges {
        waiting: gauge!(CALLS_WAITING),
        light: gauge!(CALLS_IN_PROGRESS, label::CONNECTION => "light"),
        busy: gauge!(CALLS_IN_PROGRESS, label::CONNECTION => "busy"),
    }
}

/// Records a connection closed for being idle.
pub fn connection_closed_idle(listener: &'static str) {
    counter!(CONNECTIONS_CLOSED_IDLE_TOTAL, label::LISTENER => listener).increment(1);
}

/// Why the gRPC transport refused or closed a connection, or cut a call before its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportRefusal {
    /// `server.max_connections` connections were open.
    ConnectionLimit,
    /// `server.max_connections_per_peer` connections from the same address were open.
    PeerConnectionLimit,
    /// The HTTP/2 preface did not arrive within `server.handshake_timeout`.
    HandshakeTimeout,
    /// The message would not fit in the connection's share of buffered request bytes.
    UploadBudgetConnection,
    /// The message would not fit in the process's buffered request bytes.
    UploadBudgetProcess,
    /// The call's deadline passed before it was answered (its upload had not finished).
    UploadDeadline,
    /// A SubmitVerdicts message larger than the room left in the feedback queue, refused at
    /// its prefix before it was read.
    FeedbackQueueFull,
    /// The call's deadline passed while it waited for a turn (`server.max_calls_in_progress`).
    TurnDeadline,
    /// The connection was closed: an answer on it waited for the client to take it past
    /// `server.send_timeout` (HTTP/2 flow control; `serving::grpc::delivery`).
    AnswerNotTaken,
    /// The connection was closed with a GOAWAY for breaking HTTP/2 (e.g. too many streams reset
    /// before they were answered: the "rapid reset" flood; a malformed frame).
    ProtocolError,
    /// A health Watch or reflection stream over its bound, per connection or per listener
    /// (`serving::grpc::endless`).
    EndlessStreamLimit,
}

impl TransportRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportRefusal::ConnectionLimit => "connection_limit",
            TransportRefusal::PeerConnectionLimit => "peer_connection_limit",
            TransportRefusal::HandshakeTimeout => "handshake_timeout",
            TransportRefusal::UploadBudgetConnection => "upload_budget_connection",
            TransportRefusal::UploadBudgetProcess => "upload_budget_process",
            TransportRefusal::UploadDeadline => "upload_deadline",
            TransportRefusal::FeedbackQueueFull => "feedback_queue_full",
            TransportRefusal::TurnDeadline => "turn_deadline",
            TransportRefusal::AnswerNotTaken => "answer_not_taken",
            TransportRefusal::ProtocolError => "protocol_error",
            TransportRefusal::EndlessStreamLimit => "endless_stream_limit",
        }
    }
}

/// Records a connection or call refused by the transport.
pub fn transport_refused(listener: &'static str, reason: TransportRefusal) {
    counter!(TRANSPORT_REFUSALS_TOTAL, label::LISTENER => listener, label::REASON => reason.as_str()).increment(1);
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    Startup,
    File,
    Signal,
    Admin,
}

impl ReloadTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadTrigger::Startup => "startup",
            ReloadTrigger::File => "file",
            ReloadTrigger::Signal => "signal",
            ReloadTrigger::Admin => "admin",
        }
    }
}

/// Records a reload attempt; `active` is the config now serving (new or kept).
pub fn reload_finished(
    trigger: ReloadTrigger,
    applied: bool,
    generation: u64,
    previous_sha256: Option<&str>,
    active_sha256: &str,
) {
    let result = if applied { "success" } else { "failure" };
    // Set from start-up on, so every replica has the series (the start-up config applied).
    gauge!(CONFIG_LAST_RELOAD_SUCCESS).set(if applied { 1.0 } else { 0.0 });
    if trigger != ReloadTrigger::Startup {
        counter!(CONFIG_RELOADS_TOTAL, label::TRIGGER => trigger.as_str(), label::RESULT => result).increment(1);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        gauge!(CONFIG_LAST_RELOAD_TIMESTAMP_SECONDS).set(now.as_secs_f64());
    }
    if applied {
        if let Some(old) = previous_sha256.filter(|old| *old != active_sha256) {
            gauge!(CONFIG_INFO, "sha256" => old.to_string()).set(0.0);
        }
        gauge!(CONFIG_INFO, "sha256" => active_sha256.to_string()).set(1.0);
        gauge!(CONFIG_GENERATION).set(generation as f64);
    }
}
