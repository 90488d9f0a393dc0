//! Inference: turning reviews into scores. Model packages and ONNX Runtime sessions (`model`,
//! `runtime`), tokenization (`tokenize`), the job queue callers share fairly (`queue`), batch
//! formation (`batch`), and the worker threads that own the sessions and run the batches
//! (`worker`) through the `backend` seam; `cpu` holds the per-thread CPU controls and clocks that
//! keep shadow workers behind live ones.

pub mod backend;
pub mod batch;
pub mod cpu;
pub mod model;
pub mod queue;
pub mod runtime;
pub mod tokenize;
pub mod worker;

/// Why a batch produced no scores. Every case fails the whole batch: a broken model never yields
/// a wrong answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferenceError {
    /// The tokenizer refused a text (the message is the tokenizer's).
    #[error("{0}")]
    Tokenizer(String),
    /// ONNX Runtime failed to build an input or run the graph (its message).
    #[error("{0}")]
    Runtime(String),
    #[error("no output named {0:?}")]
    MissingOutput(String),
    #[error("output {output:?} has shape {shape:?}, expected [{rows}, {labels}]")]
    Shape { output: String, shape: Vec<i64>, rows: usize, labels: usize },
    #[error("output {output:?} holds {value}, not a probability in [0, 1]")]
    NotProbability { output: String, value: f32 },
    /// Tokenization or the runtime panicked; the worker caught it and goes on.
    #[error("panicked: {0}")]
    Panicked(String),
    /// The worker went away without answering (shutdown).
    #[error("worker stopped")]
    WorkerStopped,
}
