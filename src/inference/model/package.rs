//! Reads a package folder: manifest, sha256 of model and tokenizer, tokenizer parse.
//! Everything here is blocking file IO: call it from start-up or a blocking thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokenizers::Tokenizer;

use super::ModelSpec;
use super::manifest::{MANIFEST_FILE, Manifest};

/// Why a package could not be loaded. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {size} bytes is over the limit of {limit} bytes for this file")]
    TooLarge { path: PathBuf, size: u64, limit: u64 },
    #[error("{path}: invalid manifest: {}", .errors.join("; "))]
    Manifest { path: PathBuf, errors: Vec<String> },
    #[error("{path}: sha256 mismatch: the manifest says {expected}, the file has {actual}")]
    Sha256 { path: PathBuf, expected: String, actual: String },
    #[error("{path}: not a usable tokenizer.json: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("{path}: ONNX Runtime cannot load the model: {reason}")]
    Onnx { path: PathBuf, reason: String },
    #[error("{path}: the graph does not match the manifest: {reason}")]
    Signature { path: PathBuf, reason: String },
    #[error("{path}: warm-up inference failed: {reason}")]
    WarmUp { path: PathBuf, reason: String },
}

/// The largest files a package may hold. A package is trusted input (see SECURITY.md), but a
/// wrong path or a broken build should fail with a clear error, not exhaust memory: each file is
/// read whole (the model twice over while ONNX Runtime builds a session from it).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;
pub const MAX_MODEL_BYTES: u64 = 1 << 30;

/// A verified package, ready to build sessions from.
pub struct Package {
    pub spec: Arc<ModelSpec>,
    /// The verified model bytes; sessions are built from these, never by re-reading the file,
    /// so what runs is exactly what was hashed.
    pub model_bytes: Arc<[u8]>,
    pub tokenizer: Tokenizer,
}

impl Package {
    /// Reads and verifies the package in `dir`.
    pub fn load(dir: &Path) -> Result<Package, PackageError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = read(&manifest_path, MAX_MANIFEST_BYTES)?;
        let text = String::from_utf8(text)
            .map_err(|_| PackageError::Manifest { path: manifest_path.clone(), errors: vec!["not UTF-8".into()] })?;
        let manifest_sha256 = sha256_hex(text.as_bytes());
        let manifest =
            Manifest::parse(&text).map_err(|errors| PackageError::Manifest { path: manifest_path.clone(), errors })?;

        let model_path = dir.join(&manifest.model_file);
        let model_bytes = read(&model_path, MAX_MODEL_BYTES)?;
        verify_sha256(&model_path, &model_bytes, &manifest.model_sha256)?;

        let tokenizer_path = dir.join(&manifest.tokenizer_file);
        let tokenizer_bytes = read(&tokenizer_path, MAX_TOKENIZER_BYTES)?;
        verify_sha256(&tokenizer_path, &tokenizer_bytes, &manifest.tokenizer_sha256)?;
        let tokenizer = Tokenizer::from_bytes(&tokenizer_bytes)
            .map_err(|e| PackageError::Tokenizer { path: tokenizer_path.clone(), reason: e.to_string() })?;

        let spec = ModelSpec {
            name: manifest.name,
            version: manifest.version,
            task: manifest.task,
            labels: manifest.labels,
            max_sequence_length: manifest.max_sequence_length,
            features: manifest.features,
            policy: manifest.policy,
            io: manifest.io,
            manifest_sha256,
            model_file: manifest.model_file,
            model_sha256: manifest.model_sha256,
            tokenizer_sha256: manifest.tokenizer_sha256,
            training_summary: manifest.training_summary,
            dir: dir.to_path_buf(),
        };
        Ok(Package { spec: Arc::new(spec), model_bytes: model_bytes.into(), tokenizer })
    }

    /// The model file, for error messages.
    pub fn model_path(&self) -> PathBuf {
        self.spec.dir.join(&self.spec.model_file)
    }
}

/// Reads a whole file of at most `limit` bytes. Reads through `take`, so a file that grows
/// between the size check and the read cannot get past the limit either.
fn read(path: &Path, limit: u64) -> Result<Vec<u8>, PackageError> {
    use std::io::Read;
    let error = |source| PackageError::Read { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(error)?;
    let size = file.metadata().map_err(error)?.len();
    if size > limit {
        return Err(PackageError::TooLarge { path: path.to_path_buf(), size, limit });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(error)?;
    if bytes.len() as u64 > limit {
        return Err(PackageError::TooLarge { path: path.to_path_buf(), size: bytes.len() as u64, limit });
    }
    Ok(bytes)
}

pub use crate::config::sha256_hex;

fn verify_sha256(path: &Path, bytes: &[u8], expected: &str) -> Result<(), PackageError> {
    let actual = sha256_hex(bytes);
    if actual != expected {
        return Err(PackageError::Sha256 { path: path.to_path_buf(), expected: expected.into(), actual });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_over_their_limit_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read(&path, 10).unwrap(), b"0123456789");
        let error = read(&path, 9).unwrap_err().to_string();
        assert!(error.contains("model.onnx") && error.contains("10 bytes is over the limit of 9"), "{error}");
    }
}
