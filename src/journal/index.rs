//! The journal's memory of recent decisions, for `Feedback`: (review id, task) -> the decision
//! served, by which model and policy, for which text. Bounded in entries and age, oldest
//! forgotten first; filled by the journal's writer thread, so a decision the journal dropped is
//! not in it either. Per process: a replica knows only what it served, since it last started.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::inference::model::ModelSpec;
use crate::policy::{Decision, Policy};

/// One decision as served.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedDecision {
    /// `decider` of the model and policy that decided.
    pub decider: u64,
    pub decision: Decision,
    /// The live model's scores, in its label order (policy-only shadows decide from them).
    pub scores: Box<[f32]>,
    /// sha256 of the text the model read.
    pub text_sha256: [u8; 32],
}

/// Identifies a model and policy by name and version: a decision served by another one is not
/// the decision of the model live now.
pub fn decider(model: &ModelSpec, policy: &Policy) -> u64 {
    let mut h = DefaultHasher::new();
    (&model.name, &model.version, &policy.name, &policy.version).hash(&mut h);
    h.finish()
}

/// A 64-bit key for (review id, task), as the feedback dedupe window keys them.
fn key(review_id: &str, task: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (review_id, task).hash(&mut h);
    h.finish()
}

pub struct Index {
    capacity: usize,
    max_age: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    at: HashMap<u64, (Instant, ServedDecision)>,
    /// Keys in insertion order, with when: the oldest are forgotten first.
    order: VecDeque<(u64, Instant)>,
}

impl Index {
    pub fn new(capacity: usize, max_age: Duration) -> Index {
        Index { capacity, max_age, inner: Mutex::new(Inner::default()) }
    }

    /// Remembers the latest decision for (review id, task), replacing an earlier one.
    pub fn insert(&self, review_id: &str, task: &str, served: ServedDecision, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(review_id, task);
        inner.at.insert(k, (now, served));
        inner.order.push_back((k, now));
        while let Some(&(k, t)) = inner.order.front() {
            if inner.order.len() <= self.capacity && now.duration_since(t) < self.max_age {
                break;
            }
            inner.order.pop_front();
            // Only if the entry is still the one queued then: a later insert of the same key
            // has its own place in the order.
            if inner.at.get(&k).is_some_and(|(at, _)| *at == t) {
                inner.at.remove(&k);
            }
        }
    }

    /// The decision served for (review id, task), if remembered and younger than `max_age`.
    pub fn get(&self, review_id: &str, task: &str, now: Instant) -> Option<ServedDecision> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (at, served) = inner.at.get(&key(review_id, task))?;
        (now.duration_since(*at) < self.max_age).then(|| served.clone())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap().at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(decision: Decision) -> ServedDecision {
        ServedDecision { decider: 1, decision, scores: [0.5].into(), text_sha256: [0; 32] }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_latest_decision_is_kept_per_review_and_task() {
        let index = Index::new(10, HOUR);
        let t0 = Instant::now();
        index.insert("r1", "abuse", served(Decision::Allow), t0);
        index.insert("r1", "abuse", served(Decision::Reject), t0);
        index.insert("r1", "fraud", served(Decision::Review), t0);
        assert_eq!(index.get("r1", "abuse", t0).unwrap().decision, Decision::Reject);
        assert_eq!(index.get("r1", "fraud", t0).unwrap().decision, Decision::Review);
        assert_eq!(index.get("r2", "abuse", t0), None);
    }

    #[test]
    fn it_is_bounded_in_entries_and_age() {
        let index = Index::new(3, HOUR);
        let t0 = Instant::now();
        for i in 0..5 {
            index.insert(&format!("r{i}"), "abuse", served(Decision::Allow), t0);
        }
        assert_eq!(index.len(), 3);
        assert_eq!(index.get("r0", "abuse", t0), None, "the oldest went first");
        assert!(index.get("r4", "abuse", t0).is_some());
        assert_eq!(index.get("r4", "abuse", t0 + HOUR), None, "expired");
        index.insert("late", "abuse", served(Decision::Allow), t0 + HOUR * 2);
        assert_eq!(index.len(), 1, "expired entries are forgotten on insert");
    }

    #[test]
    fn a_replaced_entry_survives_its_first_place_in_the_order() {
        let index = Index::new(2, HOUR);
        let t0 = Instant::now();
        index.insert("r1", "abuse", served(Decision::Allow), t0);
        index.insert("r1", "abuse", served(Decision::Reject), t0 + Duration::from_secs(1));
        index.insert("r2", "abuse", served(Decision::Allow), t0 + Duration::from_secs(2));
        let later = t0 + Duration::from_secs(3);
        assert_eq!(index.get("r1", "abuse", later).unwrap().decision, Decision::Reject);
    }
}
