//! modserve: a content-moderation inference server with shadow (dry-run) mode.
//!
//! # Map
//!
//! The tree is the architecture. A request flows one way, top to bottom; shadow work branches
//! off after the live answer:
//!
//! ```text
//! serving::grpc        transport: listeners, budgets, proto -> domain (validation), status
//!   -> serving::classify   tasks -> one job per task on its live model
//!   -> inference::worker   bounded queue, batch, tokenize, ONNX Runtime session
//!   -> policy              scores -> ALLOW / REVIEW / REJECT
//!   -> serving::grpc       domain -> proto
//!        \-> shadow        sample, queue on the candidate's workers, compare, log disagreements
//! ```
//!
//! Layers, each a folder:
//! - `serving`: what callers talk to (`grpc`, `http` (JSON calling the gRPC handlers), `tls`,
//!   `classify`, and `blocking`: large requests decoded and validated off the async runtime).
//! - `inference`: model packages and sessions, tokenization, batching, worker threads, and the
//!   CPU controls that keep shadow threads behind live ones.
//! - `shadow`: the live/shadow pair (sampling, effective rate, CPU budget and its headroom, breaker,
//!   comparison, disagreement log, labelling queue).
//! - `control`: the serving state (`registry`), building it (`loader`), reloading it, and the
//!   HTTP port for metrics and health probes.
//! - `feedback`: moderator verdicts scored against live and every shadow (or, for live, counted
//!   against the decision the journal recorded as served).
//! - `offline`: `modserve report`, `modserve eval` and `modserve tune`, run beside the server.
//!
//! Shared by all of them: `config` (the typed configuration and the settings types every layer
//! reads; a leaf that imports no layer), `request` (a validated review, and who sent it),
//! `rotation` (per-caller waiting lines served in turn),
//! `policy` (the decision), `journal` (every decision as JSON lines, off by default), `jsonl`
//! (the bounded, rotating JSON-lines writer behind the journal, the disagreement log and the
//! labelling queue), `log_rate` (warnings an attacker could make fire at will, at most one line
//! per period), `error` (mapped to gRPC status in `serving::grpc::status` only),
//! `metrics` (every metric name), `otel` (OpenTelemetry traces, off unless the `OTEL_*`
//! variables ask) and `shutdown`. `app` wires the layers into a running server;
//! `cli` is the command line; `sys`, the syscalls, is the one module allowed `unsafe`.

pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod error;
pub mod feedback;
pub mod inference;
pub mod journal;
pub mod jsonl;
pub mod log_rate;
pub mod metrics;
pub mod offline;
pub mod otel;
pub mod policy;
pub mod request;
pub mod rotation;
pub mod serving;
pub mod shadow;
pub mod shutdown;
#[allow(unsafe_code)]
mod sys;
