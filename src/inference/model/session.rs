//! One ONNX Runtime session for one model, owned by one inference thread: builds it from the
//! verified bytes, checks the graph against the manifest, and runs batches with output checks.

use std::sync::Arc;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::{ModelSpec, Package, PackageError};
use crate::inference::InferenceError;
use crate::inference::tokenize::TokenBatch;

/// ONNX Runtime graph rewrites left out, chosen by measurement (see `build`).
const DISABLED_OPTIMIZERS: &str = "SkipLayerNormFusion";

/// A session plus what it needs to check its inputs and outputs.
pub struct ModelSession {
    session: Session,
    spec: Arc<ModelSpec>,
}

impl ModelSession {
    /// Builds a session from the package's bytes and checks its signature against the manifest.
    pub fn build(env: &Environment, package: &Package, intra_threads: usize) -> Result<ModelSession, PackageError> {
        let onnx_err = |e: ort::Error| PackageError::Onnx { path: package.model_path(), reason: e.to_string() };
        let session = Session::builder(env)
            .map_err(onnx_err)?
            .with_intra_threads(intra_threads)
            .map_err(|e| onnx_err(e.into()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| onnx_err(e.into()))?
            // ONNX Runtime's fused SkipLayerNormalization CPU kernel took ~5 ns per element, a
            // fifth of abuse-minilm's run; the unfused Add + LayerNormalization ran the same
            // 32-review batch 1.23x faster (docs/benchmarks.md, "The transformer path").
            .with_disabled_optimizers(DISABLED_OPTIMIZERS)
            .map_err(|e| onnx_err(e.into()))?
            .commit_from_memory(&package.model_bytes)
            .map_err(onnx_err)?;
        check_signature(&session, &package.spec)
            .map_err(|reason| PackageError::Signature { path: package.model_path(), reason })?;
        Ok(ModelSession { session, spec: package.spec.clone() })
    }

    pub fn spec(&self) -> &Arc<ModelSpec> {
        &self.spec
    }

    /// Runs one batch. `features` is row-major `[rows, k]` when the model declares features.
    /// Appends `rows * n_labels` probabilities to `out`; fails on any runtime error, a wrong
    /// output shape or a non-finite score, so a broken model never yields a wrong answer.
    pub fn run(
        &mut self,
        tokens: &TokenBatch,
        features: Option<&[f32]>,
        out: &mut Vec<f32>,
    ) -> Result<(), InferenceError> {
        let shape = [tokens.rows, tokens.seq];
        let runtime = |e: ort::Error| InferenceError::Runtime(e.to_string());
        let ids = TensorRef::from_array_view((shape, tokens.ids.as_slice())).map_err(runtime)?;
        let mask = TensorRef::from_array_view((shape, tokens.mask.as_slice())).map_err(runtime)?;
        let io = &self.spec.io;
        let n_labels = self.spec.labels.len();
        let outputs = match features {
            Some(f) => {
                let k = self.spec.features.len();
                let feats = TensorRef::from_array_view(([tokens.rows, k], f)).map_err(runtime)?;
                self.session.run(ort::inputs![
                    io.input_ids.as_str() => ids,
                    io.attention_mask.as_str() => mask,
                    io.features.as_str() => feats,
                ])
            }
            None => self.session.run(ort::inputs![
                io.input_ids.as_str() => ids,
                io.attention_mask.as_str() => mask,
            ]),
        }
        .map_err(runtime)?;
        let output = || io.probabilities.clone();
        let value = outputs.get(io.probabilities.as_str()).ok_or_else(|| InferenceError::MissingOutput(output()))?;
        let (out_shape, data) = value.try_extract_tensor::<f32>().map_err(runtime)?;
        if out_shape.len() != 2 || out_shape[0] != tokens.rows as i64 || out_shape[1] != n_labels as i64 {
            let shape = out_shape.to_vec();
            return Err(InferenceError::Shape { output: output(), shape, rows: tokens.rows, labels: n_labels });
        }
        if let Some(&bad) = data.iter().find(|p| !p.is_finite() || **p < 0.0 || **p > 1.0) {
            return Err(InferenceError::NotProbability { output: output(), value: bad });
        }
        out.extend_from_slice(data);
        Ok(())
    }
}

/// Checks the graph's inputs and outputs against the manifest: names, element types, ranks, and
/// the label and feature counts where the graph fixes them.
fn check_signature(session: &Session, spec: &ModelSpec) -> Result<(), String> {
    let io = &spec.io;
    let mut problems = Vec::new();
    let mut expected_inputs = vec![
        (io.input_ids.as_str(), TensorElementType::Int64, None),
        (io.attention_mask.as_str(), TensorElementType::Int64, None),
    ];
    if !spec.features.is_empty() {
        expected_inputs.push((io.features.as_str(), TensorElementType::Float32, Some(spec.features.len())));
    }
    for input in session.inputs() {
        if !expected_inputs.iter().any(|(name, ..)| *name == input.name()) {
            problems.push(format!(
                "graph input {:?} is not one the manifest declares ({})",
                input.name(),
                expected_inputs.iter().map(|(n, ..)| format!("{n:?}")).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    for (name, ty, width) in expected_inputs {
        match session.inputs().iter().find(|i| i.name() == name) {
            None => problems.push(format!("the graph has no input named {name:?}")),
            Some(input) => check_tensor(&mut problems, "input", name, input.dtype(), ty, width),
        }
    }
    match session.outputs().iter().find(|o| o.name() == io.probabilities) {
        None => problems.push(format!(
            "the graph has no output named {:?} (it has {:?})",
            io.probabilities,
            session.outputs().iter().map(|o| o.name()).collect::<Vec<_>>()
        )),
        Some(output) => check_tensor(
            &mut problems,
            "output",
            &io.probabilities,
            output.dtype(),
            TensorElementType::Float32,
            Some(spec.labels.len()),
        ),
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// Expects a rank-2 tensor of `ty`; when `width` is given and the graph fixes the second
/// dimension, it must equal `width`.
fn check_tensor(
    problems: &mut Vec<String>,
    what: &str,
    name: &str,
    dtype: &ValueType,
    ty: TensorElementType,
    width: Option<usize>,
) {
    let ValueType::Tensor { ty: actual, shape, .. } = dtype else {
        problems.push(format!("{what} {name:?} is not a tensor"));
        return;
    };
    if *actual != ty {
        problems.push(format!("{what} {name:?} has element type {actual:?}, expected {ty:?}"));
    }
    if shape.len() != 2 {
        problems.push(format!("{what} {name:?} has rank {} (shape {:?}), expected rank 2", shape.len(), &shape[..]));
        return;
    }
    if let Some(width) = width
        && shape[1] >= 0
        && shape[1] != width as i64
    {
        let noun = if what == "output" { "labels in the manifest" } else { "features in the manifest" };
        problems.push(format!("{what} {name:?} has {} columns but there are {width} {noun}", shape[1]));
    }
}
