//! The process-wide ONNX Runtime environment, loaded from a shared library at run time.
//!
//! ONNX Runtime allows one environment per process, so it is created once and shared; tests
//! that start several servers in one process get the same one.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

static ENVIRONMENT: OnceLock<Result<Environment, RuntimeError>> = OnceLock::new();

#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "cannot load ONNX Runtime from {path}: {reason} (run scripts/fetch-onnxruntime.sh, or set MODSERVE_ONNXRUNTIME_LIB)"
)]
pub struct RuntimeError {
    pub path: PathBuf,
    pub reason: String,
}

/// Loads ONNX Runtime from `lib` on first call and returns the shared environment. Later calls
/// (and concurrent ones, which wait for the first) get the same outcome whatever `lib` they pass.
pub fn environment(lib: &Path) -> Result<Environment, RuntimeError> {
    ENVIRONMENT
        .get_or_init(|| {
            let err = |reason: String| RuntimeError { path: lib.to_path_buf(), reason };
            if !lib.is_file() {
                return Err(err("no such file".into()));
            }
            ort::init_from(lib)
                .map_err(|e| err(e.to_string()))?
                .with_name("modserve")
                .build()
                .map_err(|e| err(e.to_string()))
        })
        .clone()
}
