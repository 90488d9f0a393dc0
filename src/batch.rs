//! Batch formation: which queued jobs run together. A pure policy, unit-tested without threads;
//! the inference worker (`worker`) applies it to its queue.

use std::time::{Duration, Instant};

/// How a model's worker merges queued jobs into one inference batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BatchPolicy {
    /// Most reviews in one batch. A single job larger than this runs alone (request size is
    /// bounded separately by `limits.max_reviews_per_request`).
    pub max_batch_size: usize,
    /// How long to hold a non-full batch for more jobs once the queue is empty. Zero means
    /// "take what is queued now": no added latency at low load, natural batching under load.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub max_wait: Duration,
}

/// What to do with the next queued job given the batch so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Add it to this batch.
    Join,
    /// Run this batch now and start the next one with the job.
    Defer,
}

impl BatchPolicy {
    /// Decides whether a job of `job_reviews` reviews joins a batch holding `batch_reviews`.
    pub fn admit(&self, batch_reviews: usize, job_reviews: usize) -> Admit {
        if batch_reviews == 0 || batch_reviews + job_reviews <= self.max_batch_size {
            Admit::Join
        } else {
            Admit::Defer
        }
    }

    /// True once no further job can join.
    pub fn is_full(&self, batch_reviews: usize) -> bool {
        batch_reviews >= self.max_batch_size
    }

    /// Until when a batch started at `started` may wait for more jobs; `None` means do not wait.
    pub fn wait_until(&self, started: Instant) -> Option<Instant> {
        (!self.max_wait.is_zero()).then(|| started + self.max_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BatchPolicy = BatchPolicy { max_batch_size: 8, max_wait: Duration::ZERO };

    #[test]
    fn jobs_join_until_the_batch_would_overflow() {
        assert_eq!(POLICY.admit(0, 3), Admit::Join);
        assert_eq!(POLICY.admit(3, 5), Admit::Join);
        assert_eq!(POLICY.admit(6, 3), Admit::Defer);
    }

    #[test]
    fn an_oversized_job_runs_alone() {
        assert_eq!(POLICY.admit(0, 20), Admit::Join);
        assert!(POLICY.is_full(20));
        assert_eq!(POLICY.admit(20, 1), Admit::Defer);
    }

    #[test]
    fn full_exactly_at_the_limit() {
        assert!(!POLICY.is_full(7));
        assert!(POLICY.is_full(8));
    }

    #[test]
    fn zero_wait_never_waits() {
        let now = Instant::now();
        assert_eq!(POLICY.wait_until(now), None);
        let waiting = BatchPolicy { max_wait: Duration::from_millis(2), ..POLICY };
        assert_eq!(waiting.wait_until(now), Some(now + Duration::from_millis(2)));
    }
}
