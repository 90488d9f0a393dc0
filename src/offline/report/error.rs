//! Why a report could not be built. Each message names the cause and what to check.

use std::path::PathBuf;

use super::prometheus::{AccessError, QueryError};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("--prometheus {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(transparent)]
    Access(AccessError),
    #[error("Prometheus query `{query}` at {url} failed: {error}")]
    Query { url: String, query: String, error: QueryError },
    #[error(
        "no shadow comparisons for task {task}, candidate {candidate}{policy} in the last {window} at {url}; \
         is Prometheus scraping modserve, and is the candidate a shadow of that task?"
    )]
    NoComparisons { task: String, candidate: String, policy: String, window: String, url: String },
    #[error(
        "candidate {candidate} is the live model of task {task}: name the shadow policy with --policy \
         (policies seen: {seen})"
    )]
    PolicyRequired { task: String, candidate: String, seen: String },
    #[error("candidate {candidate} shadows task {task} under several policies ({seen}): choose one with --policy")]
    AmbiguousPolicy { task: String, candidate: String, seen: String },
    #[error("cannot read the disagreement log {}: {error}", path.display())]
    DisagreementLog { path: PathBuf, error: std::io::Error },
    #[error("cannot write {}: {error}", path.display())]
    Write { path: PathBuf, error: std::io::Error },
}
