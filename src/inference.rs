//! Inference: turning reviews into scores. Model packages and ONNX Runtime sessions (`model`,
//! `runtime`), tokenization (`tokenize`), batch formation (`batch`), and the worker threads
//! that own the sessions and run the batches (`worker`); `cpu` holds the per-thread CPU
//! controls and clocks that keep shadow workers behind live ones.

pub mod batch;
pub mod cpu;
pub mod model;
pub mod runtime;
pub mod tokenize;
pub mod worker;
