//! Model packages: reading and verifying a package folder (`package`), its manifest
//! (`manifest`), and building and checking ONNX Runtime sessions for it (`session`).

pub mod manifest;
pub mod package;
pub mod session;

pub use manifest::{Feature, IoNames, Manifest};
pub use package::{Package, PackageError};

use std::path::PathBuf;

use crate::policy::Policy;

/// What the server knows about a loaded model at run time; shared read-only by every part.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    pub task: String,
    pub labels: Vec<String>,
    pub max_sequence_length: usize,
    pub features: Vec<Feature>,
    pub policy: Policy,
    pub io: IoNames,
    /// sha256 of `manifest.toml` (a policy change alone changes it).
    pub manifest_sha256: String,
    /// The model file name inside `dir`.
    pub model_file: String,
    pub model_sha256: String,
    pub tokenizer_sha256: String,
    pub training_summary: String,
    /// The package folder it was loaded from.
    pub dir: PathBuf,
}

impl ModelSpec {
    /// The first 12 hex digits of the model's sha256, as shown in metrics.
    pub fn sha256_prefix(&self) -> &str {
        &self.model_sha256[..12]
    }
}
