//! The validated, transport-free form of a classification request.

use std::collections::HashMap;
use std::sync::Arc;

/// One review, validated. Shared (behind an `Arc`) by every task's job for the request.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewInput {
    pub id: String,
    /// What the model reads: the text, preceded by the title and a newline when there is one.
    pub model_text: String,
    pub rating: Option<f32>,
    pub signals: HashMap<String, f64>,
    /// The caller's language tag, as sent (for input monitoring only).
    pub language: Option<String>,
    /// The text or title was cut to `limits.max_text_bytes`.
    pub text_cut: bool,
}

impl ReviewInput {
    /// The value of a structured signal for a model's `features` input: the `signals` map
    /// first, then the typed `rating` field for a feature named "rating".
    pub fn signal(&self, name: &str) -> Option<f32> {
        if let Some(v) = self.signals.get(name) {
            return Some(*v as f32);
        }
        (name == "rating").then_some(self.rating).flatten()
    }
}

/// A validated request: at least one review, unique ids, texts within limits.
#[derive(Debug, Clone)]
pub struct ClassifyInput {
    pub reviews: Arc<[ReviewInput]>,
    /// Requested task names, deduplicated, in request order; empty means every task.
    pub tasks: Vec<String>,
    pub request_id: String,
}
