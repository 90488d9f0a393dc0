//! The integration tests: one binary (one link of the whole crate) with a module per area.
//! Metrics are process-wide, so a test that asserts on them holds `common::exclusive()` for its
//! whole run and every other test holds `common::shared()`: the two never overlap.
//! Binaries of their own: `tests/report.rs`, `tests/report_access.rs`, `tests/prometheus.rs` and
//! `tests/prometheus_surfaces.rs` have a real Prometheus read exact totals of the process-wide
//! recorder, which the other tests' servers (same model names, same labels) would add to. Faults are injected through the inference backend seam
//! (`common::faults`).

mod classify;
mod clients;
mod common;
mod disk;
mod eval;
mod failures;
mod feedback;
mod hostile;
mod isolation;
mod journal;
mod labelling;
mod limits;
mod monitoring;
mod process;
mod reload;
mod replicas;
mod shadow;
mod startup;
mod surfaces;
mod tls;
mod tools;
mod tune;
mod worker;
