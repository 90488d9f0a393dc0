//! The offline tools, run beside the server rather than in it: the launch-readiness report on a
//! shadow candidate from Prometheus (`report`, `modserve report`) and the same report from a
//! labelled file (`eval`, `modserve eval`), and thresholds solved from a labelled file
//! (`tune`, `modserve tune`).

pub mod eval;
pub mod report;
pub mod tune;
