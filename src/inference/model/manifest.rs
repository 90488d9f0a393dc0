//! `manifest.toml`: parsing and whole-file validation (every problem reported at once).
//! The format is documented in `docs/model-package.md`.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

pub use crate::config::{is_valid_name, toml_error};
use crate::policy::{Policy, PolicySpec, Thresholds};

/// The manifest's file name inside a package folder.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// Upper bound on `max_sequence_length`: keeps a hostile manifest from sizing huge tensors.
const MAX_SEQUENCE_LENGTH: usize = 8192;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    task: String,
    labels: Vec<String>,
    max_sequence_length: usize,
    training_summary: String,
    files: RawFiles,
    #[serde(default)]
    io: RawIo,
    #[serde(default)]
    features: Vec<RawFeature>,
    policy: RawPolicy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    model: String,
    model_sha256: String,
    tokenizer: String,
    tokenizer_sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawIo {
    input_ids: String,
    attention_mask: String,
    features: String,
    probabilities: String,
}

impl Default for RawIo {
    fn default() -> Self {
        RawIo {
            input_ids: "input_ids".into(),
            attention_mask: "attention_mask".into(),
            features: "features".into(),
            probabilities: "probabilities".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    name: String,
    default: f32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    version: String,
    #[serde(default)]
    thresholds: BTreeMap<String, Thresholds>,
}

/// A validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub task: String,
    pub labels: Vec<String>,
    pub max_sequence_length: usize,
    pub training_summary: String,
    pub model_file: String,
    pub model_sha256: String,
    pub tokenizer_file: String,
    pub tokenizer_sha256: String,
    pub io: IoNames,
    pub features: Vec<Feature>,
    pub policy: Policy,
}

/// Graph input and output names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoNames {
    pub input_ids: String,
    pub attention_mask: String,
    pub features: String,
    pub probabilities: String,
}

/// One column of the optional `features` input.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    pub name: String,
    pub default: f32,
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A file name relative to the package folder, with no way out of it.
fn is_plain_relative(s: &str) -> bool {
    let p = std::path::Path::new(s);
    !s.is_empty() && p.components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

impl Manifest {
    /// Parses and validates manifest text; on failure returns every problem found.
    pub fn parse(text: &str) -> Result<Manifest, Vec<String>> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| vec![toml_error(text, &e)])?;
        let mut errors = Vec::new();
        check_identity(&mut errors, &raw);
        check_files(&mut errors, &raw.files);
        check_features(&mut errors, &raw.features);
        let policy = policy(&mut errors, raw.policy, &raw.labels);
        // A policy that did not resolve has pushed an error, so `errors` is never empty here.
        let (true, Some(policy)) = (errors.is_empty(), policy) else {
            return Err(errors);
        };
        Ok(Manifest {
            name: raw.name,
            version: raw.version,
            task: raw.task,
            labels: raw.labels,
            max_sequence_length: raw.max_sequence_length,
            training_summary: raw.training_summary,
            model_file: raw.files.model,
            model_sha256: raw.files.model_sha256,
            tokenizer_file: raw.files.tokenizer,
            tokenizer_sha256: raw.files.tokenizer_sha256,
            io: IoNames {
                input_ids: raw.io.input_ids,
                attention_mask: raw.io.attention_mask,
                features: raw.io.features,
                probabilities: raw.io.probabilities,
            },
            features: raw.features.into_iter().map(|f| Feature { name: f.name, default: f.default }).collect(),
            policy,
        })
    }
}

/// Pushes `msg` when `ok` is false.
fn check(errors: &mut Vec<String>, ok: bool, msg: String) {
    if !ok {
        errors.push(msg);
    }
}

/// Name, version, task, labels and length limit.
fn check_identity(errors: &mut Vec<String>, raw: &RawManifest) {
    check(errors, is_valid_name(&raw.name), format!("name {:?}: use 1-64 of [a-z0-9._-]", raw.name));
    check(errors, !raw.version.trim().is_empty(), "version: must not be empty".into());
    check(errors, is_valid_name(&raw.task), format!("task {:?}: use 1-64 of [a-z0-9._-]", raw.task));
    check(errors, !raw.labels.is_empty(), "labels: at least one label is required".into());
    let mut seen = HashSet::new();
    for (i, label) in raw.labels.iter().enumerate() {
        check(errors, is_valid_name(label), format!("labels[{i}] {label:?}: use 1-64 of [a-z0-9._-]"));
        check(errors, seen.insert(label), format!("labels[{i}] {label:?}: duplicate label"));
    }
    check(
        errors,
        (1..=MAX_SEQUENCE_LENGTH).contains(&raw.max_sequence_length),
        format!("max_sequence_length {}: must be 1..={MAX_SEQUENCE_LENGTH}", raw.max_sequence_length),
    );
}

/// `[files]`: paths inside the package, and their digests.
fn check_files(errors: &mut Vec<String>, files: &RawFiles) {
    check(
        errors,
        is_plain_relative(&files.model),
        format!("files.model {:?}: must be a relative path inside the package", files.model),
    );
    check(
        errors,
        is_plain_relative(&files.tokenizer),
        format!("files.tokenizer {:?}: must be a relative path inside the package", files.tokenizer),
    );
    check(errors, is_sha256_hex(&files.model_sha256), "files.model_sha256: must be 64 lowercase hex digits".into());
    check(
        errors,
        is_sha256_hex(&files.tokenizer_sha256),
        "files.tokenizer_sha256: must be 64 lowercase hex digits".into(),
    );
}

/// `[[features]]`: named once each, with a finite default.
fn check_features(errors: &mut Vec<String>, features: &[RawFeature]) {
    let mut names = HashSet::new();
    for (i, f) in features.iter().enumerate() {
        check(errors, !f.name.is_empty(), format!("features[{i}].name: must not be empty"));
        check(errors, names.insert(&f.name), format!("features[{i}].name {:?}: duplicate feature", f.name));
        check(errors, f.default.is_finite(), format!("features[{i}].default: must be a finite number"));
    }
}

/// `[policy]`, the model's default decision policy, resolved against its labels; `None` after
/// recording why not.
fn policy(errors: &mut Vec<String>, raw: RawPolicy, labels: &[String]) -> Option<Policy> {
    check(errors, !raw.name.is_empty(), "policy.name: must not be empty".into());
    check(errors, !raw.version.is_empty(), "policy.version: must not be empty".into());
    for (label, t) in &raw.thresholds {
        errors.extend(t.errors(&format!("policy.thresholds.{label}")));
    }
    let spec = PolicySpec { name: raw.name, version: raw.version, thresholds: raw.thresholds };
    match spec.resolve(labels) {
        Ok(policy) => Some(policy),
        Err(unknown) => {
            for label in unknown {
                errors.push(format!("policy.thresholds.{label}: no such label (labels are {labels:?})"));
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "abuse-v1"
version = "1.0.0"
task = "abuse"
labels = ["insult", "threat"]
max_sequence_length = 64
training_summary = "test"
[files]
model = "model.onnx"
model_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
tokenizer = "tokenizer.json"
tokenizer_sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
[[features]]
name = "rating"
default = 3.0
[policy]
name = "default"
version = "1"
[policy.thresholds.threat]
review = 0.3
reject = 0.7
"#;

    #[test]
    fn parses_a_good_manifest() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.labels, ["insult", "threat"]);
        assert_eq!(m.io.input_ids, "input_ids");
        assert_eq!(m.features, [Feature { name: "rating".into(), default: 3.0 }]);
        assert_eq!(m.policy.thresholds[0], None);
        assert_eq!(m.policy.thresholds[1], Some(Thresholds { review: Some(0.3), reject: Some(0.7) }));
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let text = GOOD.replace("labels =", "lables =");
        let errors = Manifest::parse(&text).unwrap_err();
        assert!(errors[0].contains("lables"), "{errors:?}");
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = GOOD
            .replace("\"abuse-v1\"", "\"Abuse V1\"")
            .replace("max_sequence_length = 64", "max_sequence_length = 0")
            .replace("reject = 0.7", "reject = 0.2")
            .replace("model = \"model.onnx\"", "model = \"../model.onnx\"");
        let errors = Manifest::parse(&text).unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("name")));
        assert!(errors.iter().any(|e| e.starts_with("max_sequence_length")));
        assert!(errors.iter().any(|e| e.starts_with("policy.thresholds.threat")));
        assert!(errors.iter().any(|e| e.starts_with("files.model")));
    }

    #[test]
    fn threshold_for_unknown_label_is_an_error() {
        let text = GOOD.replace("[policy.thresholds.threat]", "[policy.thresholds.spam]");
        let errors = Manifest::parse(&text).unwrap_err();
        assert!(errors[0].contains("no such label"), "{errors:?}");
    }
}
