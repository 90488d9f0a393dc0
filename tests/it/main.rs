//! The integration tests: one binary (one link of the whole crate) with a module per area.
//! Metrics are process-wide, so a test that asserts on them holds `common::exclusive()` for its
//! whole run and every other test holds `common::shared()`: the two never overlap.
//! `tests/isolation.rs` stays a binary of its own: it counts the process's threads and their CPU
//! time. Faults are injected through the inference backend seam (`common::faults`).

mod classify;
mod common;
mod disk;
mod eval;
mod failures;
mod feedback;
mod hostile;
mod limits;
mod monitoring;
mod process;
mod reload;
mod replicas;
mod shadow;
mod startup;
mod tls;
mod tune;
mod worker;
