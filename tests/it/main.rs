//! The integration tests: one binary (one link of the whole crate) with a module per area.
//! Metrics are process-wide, so a test that asserts on them holds `common::exclusive()` for its
//! whole run and every other test holds `common::shared()`: the two never overlap.
//! `tests/startup.rs` and `tests/isolation.rs` stay binaries of their own: they set a
//! process-wide fault hook and count the process's threads.

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
mod tls;
mod tune;
mod worker;
