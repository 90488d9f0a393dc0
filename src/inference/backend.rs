//! The seam between the inference workers and what computes the scores: ONNX Runtime in the
//! server (`model::session::ModelSession`, built by `Backends`), a scripted fake in unit tests
//! (`fake`), and in integration tests a wrapper around the real session (`Backends::wrapped`)
//! that injects faults: a panic, a stall, a slow tokenizer. The workers' own behaviour
//! (batching, deadlines, panics, errors) is tested through it, never through review text.

use std::sync::Arc;

use ort::environment::Environment;

use crate::inference::InferenceError;
use crate::inference::model::session::ModelSession;
use crate::inference::model::{ModelSpec, Package, PackageError};
use crate::inference::tokenize::TokenBatch;

/// Scores padded batches for one model. One per worker thread, never shared.
pub trait Backend: Send {
    /// Scores one batch: appends `tokens.rows * labels` probabilities to `out`, row-major.
    /// `features` is row-major `[rows, k]` when the model declares features.
    fn run(&mut self, tokens: &TokenBatch, features: Option<&[f32]>, out: &mut Vec<f32>) -> Result<(), InferenceError>;

    /// Called on the worker thread before each review is tokenized for this model. Nothing in
    /// the server; a test backend stalls here to stand in for a slow tokenizer.
    fn before_tokenizing(&mut self) {}
}

/// Wraps each backend a model's workers get (tests: fault injection). Given the model's spec.
pub type Wrap = Arc<dyn Fn(&ModelSpec, Box<dyn Backend>) -> Box<dyn Backend> + Send + Sync>;

/// Makes the backends of every model a server loads: ONNX Runtime sessions, each passed
/// through `wrap` when one is set.
#[derive(Clone)]
pub struct Backends {
    env: Environment,
    wrap: Option<Wrap>,
}

impl Backends {
    pub fn new(env: Environment) -> Backends {
        Backends { env, wrap: None }
    }

    /// Every session built is handed to `wrap`, and the workers use what it returns.
    pub fn wrapped(env: Environment, wrap: Wrap) -> Backends {
        Backends { env, wrap: Some(wrap) }
    }

    /// One session for `package`, checked against its manifest, then wrapped.
    pub fn build(&self, package: &Package, intra_threads: usize) -> Result<Box<dyn Backend>, PackageError> {
        let session: Box<dyn Backend> = Box::new(ModelSession::build(&self.env, package, intra_threads)?);
        Ok(match &self.wrap {
            Some(wrap) => wrap(&package.spec, session),
            None => session,
        })
    }
}

impl Backend for ModelSession {
    fn run(&mut self, tokens: &TokenBatch, features: Option<&[f32]>, out: &mut Vec<f32>) -> Result<(), InferenceError> {
        ModelSession::run(self, tokens, features, out)
    }
}

/// A backend whose answer a test scripts, batch by batch.
#[cfg(test)]
pub mod fake {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

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
        tokenizing: Duration,
    }

    impl FakeBackend {
        pub fn new(script: impl Fn(&[i64]) -> Result<Vec<f32>, InferenceError> + Send + Sync + 'static) -> FakeBackend {
            FakeBackend {
                script: Arc::new(script),
                batches: Arc::default(),
                rows: Arc::default(),
                tokenizing: Duration::ZERO,
            }
        }

        /// Every review takes `stall` longer to tokenize, as with a slow tokenizer.
        pub fn slow_tokenizing(self, stall: Duration) -> FakeBackend {
            FakeBackend { tokenizing: stall, ..self }
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

        fn before_tokenizing(&mut self) {
            std::thread::sleep(self.tokenizing);
        }
    }
}
