//! Batch formation: which queued jobs run together. A pure policy, unit-tested without threads;
//! the inference worker (`worker`) applies it to its queue.

pub use crate::config::BatchPolicy;
use std::time::Instant;

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
    use std::time::Duration;

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

    /// Forms batches from queued job sizes the way the worker applies the policy.
    fn form(policy: &BatchPolicy, jobs: &[usize]) -> Vec<Vec<usize>> {
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let mut reviews = 0;
        for &job in jobs {
            let start_new = batches.is_empty() || policy.is_full(reviews) || policy.admit(reviews, job) == Admit::Defer;
            if start_new {
                batches.push(Vec::new());
                reviews = 0;
            }
            batches.last_mut().unwrap().push(job);
            reviews += job;
        }
        batches
    }

    proptest::proptest! {
        #[test]
        fn admit_joins_exactly_when_the_batch_is_empty_or_stays_within_the_limit(
            max in 1usize..128, batch in 0usize..256, job in 1usize..128,
        ) {
            let policy = BatchPolicy { max_batch_size: max, max_wait: Duration::ZERO };
            let join = policy.admit(batch, job) == Admit::Join;
            proptest::prop_assert_eq!(join, batch == 0 || batch + job <= max);
            proptest::prop_assert_eq!(policy.is_full(batch), batch >= max);
        }

        #[test]
        fn batches_keep_every_job_once_in_order_and_overflow_only_alone(
            max in 1usize..64, jobs in proptest::collection::vec(1usize..80, 0..200),
        ) {
            let policy = BatchPolicy { max_batch_size: max, max_wait: Duration::ZERO };
            let batches = form(&policy, &jobs);
            let flat: Vec<usize> = batches.iter().flatten().copied().collect();
            proptest::prop_assert_eq!(&flat, &jobs, "every job once, in queue order");
            for (i, batch) in batches.iter().enumerate() {
                let total: usize = batch.iter().sum();
                proptest::prop_assert!(!batch.is_empty());
                proptest::prop_assert!(total <= max || batch.len() == 1, "batch {:?} over {} with several jobs", batch, max);
                // Greedy: the next batch's first job would not have fitted in this one.
                if let Some(next) = batches.get(i + 1) {
                    proptest::prop_assert!(total + next[0] > max, "{:?} then {:?}: could have joined", batch, next);
                }
            }
        }
    }
}
