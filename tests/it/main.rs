//! The integration tests: one binary (one link of the whole crate) with a module per area.
//! Metrics are process-wide, so a test that asserts on them holds `common::exclusive()` for its
//! whole run and every other test holds `common::shared()`: the two never overlap.
//! Binaries of their own: `tests/isolation.rs` counts the process's threads and their CPU time;
//! `tests/report.rs` and `tests/report_access.rs` read exact totals of the process-wide
//! recorder through a real Prometheus; `tests/prometheus.rs` and `tests/tools.rs` check the
//! scrape and the tools. Faults are injected through the inference backend seam
//! (`common::faults`).

mod classify;
mod clients;
mod common;
mod disk;
mod eval;
mod failures;
mod feedback;
mod hostile;
mod http;
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
mod tune;
mod worker;
