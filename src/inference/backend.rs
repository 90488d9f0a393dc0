//! The seam between the inference workers and what computes the scores: ONNX Runtime in the
//! server (`model::session::ModelSession`), a scripted fake in tests (`fake`), so the workers'
//! own behaviour (batching, deadlines, panics, errors) is tested without a model runtime.

use crate::inference::InferenceError;
use crate::inference::model::session::ModelSession;
use crate::inference::tokenize::TokenBatch;

/// Scores padded batches for one model. One per worker thread, never shared.
pub trait Backend: Send {
    /// Scores one batch: appends `tokens.rows * labels` probabilities to `out`, row-major.
    /// `features` is row-major `[rows, k]` when the model declares features.
    fn run(&mut self, tokens: &TokenBatch, features: Option<&[f32]>, out: &mut Vec<f32>) -> Result<(), InferenceError>;
}

impl Backend for ModelSession {
    fn run(&mut self, tokens: &TokenBatch, features: Option<&[f32]>, out: &mut Vec<f32>) -> Result<(), InferenceError> {
        ModelSession::run(self, tokens, features, out)
    }
}

/// A backend whose answer a test scripts, batch by batch.
#[cfg(any(test, feature = "fault-injection"))]
pub mod fake {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::Backend;
    use crate::inference::InferenceError;
    use crate::inference::tokenize::TokenBatch;

    /// What one batch gets: the scores of each row (given its token ids), or an error. The
    /// script may also sleep or panic, as a real runtime might.
    pub type Script = dyn Fn(&[i64]) -> Result<Vec<f32>, InferenceError> + Send + Sync;

    /// Runs `script` on every row of a batch; counts the batches and rows it was given.
    #[derive(Clone)]
    pub struct FakeBackend {
        script: Arc<Script>,
        pub batches: Arc<AtomicUsize>,
        pub rows: Arc<AtomicUsize>,
    }

    impl FakeBackend {
        pub fn new(script: impl Fn(&[i64]) -> Result<Vec<f32>, InferenceError> + Send + Sync + 'static) -> FakeBackend {
            FakeBackend { script: Arc::new(script), batches: Arc::default(), rows: Arc::default() }
        }
    }

    impl Backend for FakeBackend {
        fn run(&mut self, tokens: &TokenBatch, _: Option<&[f32]>, out: &mut Vec<f32>) -> Result<(), InferenceError> {
            self.batches.fetch_add(1, Ordering::SeqCst);
            self.rows.fetch_add(tokens.rows, Ordering::SeqCst);
            let mut scored = Vec::new();
            for row in tokens.ids.chunks(tokens.seq.max(1)).take(tokens.rows) {
                scored.extend((self.script)(row)?);
            }
            out.extend(scored);
            Ok(())
        }
    }
}
