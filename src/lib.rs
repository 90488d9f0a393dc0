//! modserve: a content-moderation inference server with shadow (dry-run) mode.
//!
//! A request flows one way:
//!
//! ```text
//! grpc::service -> grpc::convert (validate) -> classify (facade: tasks -> live models)
//!   -> worker (bounded queue, batch::BatchPolicy, tokenize, model::session on ONNX Runtime)
//!   -> policy (decision) -> grpc::convert (response)
//! ```
//!
//! `app` wires it together; `registry` holds the serving state behind one swappable pointer;
//! `config` is the typed configuration; `metrics` owns every metric name; `error` is the error
//! type, mapped to gRPC status in `grpc::status` only. `report` is the offline side: the
//! launch-readiness report on a shadow candidate, from Prometheus (`modserve report`).

pub mod admin;
pub mod app;
pub mod batch;
pub mod breaker;
pub mod classify;
pub mod compare;
pub mod config;
pub mod cpu;
pub mod disagreement;
pub mod error;
pub mod eval;
pub mod feedback;
pub mod grpc;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod registry;
pub mod reload;
pub mod report;
pub mod request;
pub mod runtime;
pub mod shadow;
pub mod shutdown;
pub mod tls;
pub mod tokenize;
pub mod worker;
