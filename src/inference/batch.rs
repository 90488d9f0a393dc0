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

/// What one run of a model costs, as measured at load: a fixed part per run and a part per padded
/// token (`rows * longest row`). For a bag-of-words model the fixed part dominates and a batch is
/// best run whole; for a transformer nearly all of it is per token, and padding a 10-token review
/// to a 60-token neighbour's length pays for 50 tokens of nothing.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RunCost {
    pub per_run_ns: f64,
    pub per_token_ns: f64,
}

/// A split is taken only when it saves at least this share of running the batch whole, and at
/// least `MIN_SPLIT_SAVING_NS`: the cost model is a measurement, a split it barely favours is
/// within its error, and on a small model the whole batch costs microseconds either way.
const MIN_SPLIT_SAVING: f64 = 0.1;
const MIN_SPLIT_SAVING_NS: f64 = 100_000.0;

/// The most padded tokens (rows x longest row) one run may take; a batch over it runs as
/// several. A transformer's activations grow with the padded tokens (its attention with their
/// square per row), and ONNX Runtime keeps the largest run's buffers: under attack i (2 MiB
/// requests of long reviews) from a fresh server, the default config's two transformer shadows
/// grew RSS by 364-426 MiB running 32 reviews of 128 tokens at a time, by 126-163 MiB at 1,024
/// tokens a run, and by 81-84 MiB at 512 (+19-25 MiB without them). 512 cost abuse-minilm 0-3%
/// of its reviews/s (docs/reliability.md).
pub const MAX_RUN_TOKENS: usize = 512;

impl RunCost {
    /// Estimated cost of running rows of these lengths as one padded batch.
    pub fn of(&self, rows: usize, longest: usize) -> f64 {
        self.per_run_ns + self.per_token_ns * (rows * longest.max(1)) as f64
    }

    /// Groups a batch's rows (by their token counts) into runs of similar length, each padded to
    /// its own longest row, when that is cheaper by this cost than one run of the whole batch,
    /// or when the whole batch would exceed `MAX_RUN_TOKENS` padded tokens (no run does, but a
    /// single row). Returns row indices per run, every row exactly once; a single group means
    /// "run it whole". Optimal for the cost model: rows sorted by length, then the cheapest cut
    /// into contiguous groups (each group's padded width is its last, longest row), O(n^2).
    pub fn split_by_length(&self, lengths: &[usize]) -> Vec<Vec<usize>> {
        let n = lengths.len();
        let whole = vec![(0..n).collect::<Vec<_>>()];
        let fits = |rows: usize, longest: usize| rows == 1 || rows * longest <= MAX_RUN_TOKENS;
        let longest = lengths.iter().map(|&l| l.max(1)).max().unwrap_or(1);
        // A split saves at most the padding's per-token cost: when that is small, run it whole
        // without searching (the common case for bag-of-words models, batch after batch).
        let padding: usize = lengths.iter().map(|&l| longest - l.max(1)).sum();
        if n < 2 || (fits(n, longest) && self.per_token_ns * (padding as f64) < MIN_SPLIT_SAVING_NS) {
            return whole;
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| lengths[i]);
        let len = |k: usize| lengths[order[k]].max(1);
        // best[j]: cheapest cost of the first j sorted rows; cut[j]: where its last group starts.
        let mut best = vec![0.0f64; n + 1];
        let mut cut = vec![0usize; n + 1];
        for j in 1..=n {
            best[j] = f64::INFINITY;
            for i in 0..j {
                // A run over the token budget is not a choice; one row always is.
                let cost = if fits(j - i, len(j - 1)) { best[i] + self.of(j - i, len(j - 1)) } else { f64::INFINITY };
                if cost < best[j] {
                    best[j] = cost;
                    cut[j] = i;
                }
            }
        }
        let unsplit = self.of(n, len(n - 1));
        let worth_it = best[n] <= unsplit * (1.0 - MIN_SPLIT_SAVING) && unsplit - best[n] >= MIN_SPLIT_SAVING_NS;
        if fits(n, len(n - 1)) && !worth_it {
            return whole;
        }
        let mut groups = Vec::new();
        let mut j = n;
        while j > 0 {
            groups.push(order[cut[j]..j].to_vec());
            j = cut[j];
        }
        groups.reverse();
        groups
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

    const TRANSFORMER: RunCost = RunCost { per_run_ns: 2_000_000.0, per_token_ns: 100_000.0 };
    const BAG: RunCost = RunCost { per_run_ns: 20_000.0, per_token_ns: 30.0 };

    fn covers_every_row_once(groups: &[Vec<usize>], n: usize) {
        let mut all: Vec<usize> = groups.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "{groups:?}");
    }

    #[test]
    fn a_transformer_batch_of_mixed_lengths_runs_as_groups_of_similar_length() {
        let lengths = [60, 8, 10, 58, 9, 61, 12, 59];
        let groups = TRANSFORMER.split_by_length(&lengths);
        covers_every_row_once(&groups, lengths.len());
        assert_eq!(groups.len(), 2, "{groups:?}");
        let mut short: Vec<usize> = groups[0].iter().map(|&i| lengths[i]).collect();
        short.sort();
        assert_eq!(short, [8, 9, 10, 12], "the short rows run together, padded to 12, not 61");
        let cost: f64 =
            groups.iter().map(|g| TRANSFORMER.of(g.len(), g.iter().map(|&i| lengths[i]).max().unwrap())).sum();
        assert!(cost < TRANSFORMER.of(8, 61) * 0.9, "the split is cheaper by the model's own cost");
    }

    #[test]
    fn a_batch_of_similar_lengths_runs_whole() {
        let lengths = [20, 21, 22, 20, 23, 21];
        assert_eq!(TRANSFORMER.split_by_length(&lengths), vec![(0..6).collect::<Vec<_>>()]);
    }

    #[test]
    fn a_model_whose_cost_is_per_run_never_splits() {
        let lengths = [60, 8, 10, 58, 9, 61, 12, 59];
        assert_eq!(BAG.split_by_length(&lengths), vec![(0..8).collect::<Vec<_>>()]);
        assert_eq!(RunCost::default().split_by_length(&lengths).len(), 1, "unmeasured: run whole");
    }

    #[test]
    fn no_run_exceeds_the_token_budget_whatever_the_cost() {
        // 32 rows of 128 tokens: 4,096 padded tokens, eight times the budget.
        let lengths = vec![128; 32];
        for cost in [TRANSFORMER, BAG, RunCost::default()] {
            let groups = cost.split_by_length(&lengths);
            covers_every_row_once(&groups, 32);
            assert!(groups.iter().all(|g| g.len() * 128 <= MAX_RUN_TOKENS), "{cost:?}: {groups:?}");
        }
        // One row longer than the budget still runs, alone.
        assert_eq!(BAG.split_by_length(&[MAX_RUN_TOKENS + 1, 3]).len(), 2);
    }

    #[test]
    fn one_row_and_empty_rows_are_well_formed() {
        assert_eq!(TRANSFORMER.split_by_length(&[5]), vec![vec![0]]);
        assert_eq!(TRANSFORMER.split_by_length(&[]), vec![Vec::<usize>::new()]);
        let groups = TRANSFORMER.split_by_length(&[0, 0, 64, 64]);
        covers_every_row_once(&groups, 4);
    }
}
