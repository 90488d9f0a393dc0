//! The integration tests: one binary (one link of the whole crate) with a module per area.
//! Metrics are process-wide, so a test that asserts on them holds `common::exclusive()` for its
//! whole run and every other test holds `common::shared()`: the two never overlap.
//! Tests that have a real Prometheus read exact totals (`prometheus`, `prometheus_surfaces`,
//! `report`, `report_access`) start the server as a process of its own (`common::ChildServer`),
//! so no other test's server adds to them. Faults are injected through the inference backend seam
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
mod isolation;
mod journal;
mod labelling;
mod limits;
mod monitoring;
mod otel;
mod process;
mod prometheus;
mod prometheus_surfaces;
mod reload;
mod replicas;
mod report;
mod report_access;
mod shadow;
mod startup;
mod surfaces;
mod tls;
mod tools;
mod tune;
mod worker;
