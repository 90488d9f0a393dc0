//! The decision journal: every live decision, and every shadow decision compared with one, as
//! JSON lines, for answering appeals long after the fact and for shipping to a log pipeline.
//! Off unless `[journal]` is configured.
//!
//! The request path only queues: one `try_send` per call, holding the call's reviews (shared,
//! not copied) and each task's scores and decisions. The writer thread (`jsonl`, shared with the
//! disagreement log) formats the lines, hashes the texts, and fills the index that `Feedback`
//! counts verdicts against (`index`). A full queue or a failing disk drops and counts records
//! (`modserve_journal_records_total`), never blocking a call.
//!
//! Two kinds of line, linked by review id and task (and the text's hash):
//! - `"kind":"decision"`: a live decision as served, written when the call is answered;
//! - `"kind":"shadow"`: a shadow's decision on the same review, written when the comparison lands
//!   (later, on the shadow's worker; only for sampled reviews the shadow could run).

pub mod index;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use serde::Serialize;

pub use crate::config::JournalConfig;
use crate::inference::model::ModelSpec;
use crate::jsonl::{self, Render, Sink};
use crate::metrics::LogMetrics;
use crate::policy::{Decision, Policy};
use crate::request::ReviewInput;
use index::{Index, ServedDecision};

/// The cheap, cloneable front door; the writer thread drains the queue and exits once every
/// handle is dropped (at shutdown, after the last call and shadow comparison).
#[derive(Clone)]
pub struct Journal {
    sink: Sink<Message>,
    /// Recent decisions for `Feedback`; `None` when `index_capacity` is 0.
    index: Option<Arc<Index>>,
    pub config: JournalConfig,
}

/// A model with the policy that decided for it.
#[derive(Clone)]
pub struct Decider {
    pub model: Arc<ModelSpec>,
    pub policy: Arc<Policy>,
}

/// One task's live answers for every review of a call.
pub struct ServedTask {
    pub task: String,
    /// The named surface decided for (`None`: the default surface).
    pub surface: Option<String>,
    pub decider: Decider,
    /// `reviews * labels`, row-major.
    pub scores: Vec<f32>,
    pub decisions: Vec<Decision>,
}

/// One shadow decision compared with the live one.
pub struct ComparedReview {
    pub review_id: String,
    pub text: String,
    pub live_decision: Decision,
    pub decision: Decision,
    pub scores: Vec<f32>,
}

/// What the request path and the shadow workers queue.
pub enum Message {
    Served {
        at: SystemTime,
        request_id: String,
        reviews: Arc<[ReviewInput]>,
        tasks: Vec<ServedTask>,
    },
    Compared {
        at: SystemTime,
        task: String,
        surface: Option<String>,
        live: Decider,
        shadow: Decider,
        reviews: Vec<ComparedReview>,
    },
}

impl Journal {
    /// Opens (creating folders as needed, cutting a torn last line) and starts the writer.
    pub fn start(config: JournalConfig) -> std::io::Result<(Journal, JoinHandle<()>)> {
        let settings = jsonl::Settings {
            name: "journal",
            path: config.path.clone(),
            max_file_bytes: config.max_file_bytes,
            max_file_age: Some(config.max_file_age).filter(|d| !d.is_zero()),
            max_files: config.max_files,
            retention: Some(config.retention).filter(|d| !d.is_zero()),
            queue_capacity: config.queue_capacity,
        };
        let index =
            (config.index_capacity > 0).then(|| Arc::new(Index::new(config.index_capacity, config.index_max_age)));
        let writer = Writer { include_text: config.include_text, index: index.clone() };
        let (sink, thread) = jsonl::start(settings, writer, LogMetrics::journal())?;
        Ok((Journal { sink, index, config }, thread))
    }

    /// Queues a call's live decisions: `reviews` shared with the call, one record per review
    /// and task.
    pub fn served(&self, request_id: &str, reviews: &Arc<[ReviewInput]>, tasks: Vec<ServedTask>) {
        let records = (reviews.len() * tasks.len()) as u64;
        let message = Message::Served {
            at: SystemTime::now(),
            request_id: request_id.to_string(),
            reviews: reviews.clone(),
            tasks,
        };
        self.sink.send(message, records);
    }

    /// Queues a shadow's decisions on reviews it was compared on (when `include_shadows`).
    pub fn compared(
        &self,
        task: &str,
        surface: Option<&str>,
        live: Decider,
        shadow: Decider,
        reviews: Vec<ComparedReview>,
    ) {
        if !self.config.include_shadows || reviews.is_empty() {
            return;
        }
        let records = reviews.len() as u64;
        let message = Message::Compared {
            at: SystemTime::now(),
            task: task.to_string(),
            surface: surface.map(str::to_string),
            live,
            shadow,
            reviews,
        };
        self.sink.send(message, records);
    }

    /// The decision served for (review id, task), if the index still holds it.
    pub fn served_decision(&self, review_id: &str, task: &str) -> Option<ServedDecision> {
        self.index.as_ref()?.get(review_id, task, Instant::now())
    }
}

/// The sha256 a journal line carries for a text, as bytes.
pub fn text_sha256(text: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).into()
}

/// A live decision as served.
#[derive(Serialize)]
struct DecisionLine<'a> {
    kind: &'static str,
    time: &'a str,
    request_id: &'a str,
    review_id: &'a str,
    task: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    surface: Option<&'a str>,
    text_sha256: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    model: &'a str,
    model_version: &'a str,
    policy: &'a str,
    policy_version: &'a str,
    decision: &'a str,
    scores: BTreeMap<&'a str, f32>,
}

/// A shadow's decision on a review, with the live decision it was compared with.
#[derive(Serialize)]
struct ShadowLine<'a> {
    kind: &'static str,
    time: &'a str,
    review_id: &'a str,
    task: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    surface: Option<&'a str>,
    text_sha256: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    model: &'a str,
    model_version: &'a str,
    policy: &'a str,
    policy_version: &'a str,
    decision: &'a str,
    scores: BTreeMap<&'a str, f32>,
    live_model: &'a str,
    live_model_version: &'a str,
    live_policy: &'a str,
    live_policy_version: &'a str,
    live_decision: &'a str,
}

/// Formats lines on the writer thread and fills the index.
struct Writer {
    include_text: bool,
    index: Option<Arc<Index>>,
}

fn scores<'a>(model: &'a ModelSpec, scores: &[f32]) -> BTreeMap<&'a str, f32> {
    model.labels.iter().map(String::as_str).zip(scores.iter().copied()).collect()
}

fn emit(line: &mut dyn FnMut(&[u8]), buf: &mut Vec<u8>, value: &impl Serialize) {
    buf.clear();
    // Serializing these plain structs cannot fail; a line that did would be left out.
    if serde_json::to_writer(&mut *buf, value).is_ok() {
        line(buf);
    }
}

impl Render for Writer {
    type Message = Message;

    fn render(&mut self, message: Message, line: &mut dyn FnMut(&[u8])) {
        let mut buf = Vec::with_capacity(512);
        match message {
            Message::Served { at, request_id, reviews, tasks } => {
                let time = humantime::format_rfc3339_millis(at).to_string();
                let now = Instant::now();
                for (r, review) in reviews.iter().enumerate() {
                    let sha = text_sha256(&review.model_text);
                    let sha_hex = hex::encode(sha);
                    for t in &tasks {
                        let n = t.decider.model.labels.len();
                        let row = &t.scores[r * n..(r + 1) * n];
                        let decision = t.decisions[r];
                        emit(
                            line,
                            &mut buf,
                            &DecisionLine {
                                kind: "decision",
                                time: &time,
                                request_id: &request_id,
                                review_id: &review.id,
                                task: &t.task,
                                surface: t.surface.as_deref(),
                                text_sha256: &sha_hex,
                                text: self.include_text.then_some(review.model_text.as_str()),
                                model: &t.decider.model.name,
                                model_version: &t.decider.model.version,
                                policy: &t.decider.policy.name,
                                policy_version: &t.decider.policy.version,
                                decision: decision.as_str(),
                                scores: scores(&t.decider.model, row),
                            },
                        );
                        if let Some(index) = &self.index {
                            let served = ServedDecision {
                                decider: index::decider(&t.decider.model, &t.decider.policy),
                                decision,
                                scores: row.into(),
                                text_sha256: sha,
                            };
                            index.insert(&review.id, &t.task, served, now);
                        }
                    }
                }
            }
            Message::Compared { at, task, surface, live, shadow, reviews } => {
                let time = humantime::format_rfc3339_millis(at).to_string();
                for review in &reviews {
                    let sha_hex = hex::encode(text_sha256(&review.text));
                    emit(
                        line,
                        &mut buf,
                        &ShadowLine {
                            kind: "shadow",
                            time: &time,
                            review_id: &review.review_id,
                            task: &task,
                            surface: surface.as_deref(),
                            text_sha256: &sha_hex,
                            text: self.include_text.then_some(review.text.as_str()),
                            model: &shadow.model.name,
                            model_version: &shadow.model.version,
                            policy: &shadow.policy.name,
                            policy_version: &shadow.policy.version,
                            decision: review.decision.as_str(),
                            scores: scores(&shadow.model, &review.scores),
                            live_model: &live.model.name,
                            live_model_version: &live.model.version,
                            live_policy: &live.policy.name,
                            live_policy_version: &live.policy.version,
                            live_decision: review.live_decision.as_str(),
                        },
                    );
                }
            }
        }
    }
}
