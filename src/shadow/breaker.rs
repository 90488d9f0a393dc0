//! A circuit breaker for one shadow: pauses it when too many of its recent batches failed or
//! ran over the latency budget, and lets it try again after a cool-down.
//!
//! The state machine (`BreakerState`) is pure and unit-tested; `Breaker` wraps it for sharing:
//! the shadow's worker threads record outcomes (behind a mutex, off the request path) and the
//! request path only reads an atomic "open until" instant.

pub use crate::config::BreakerPolicy;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The pure state: a window of recent outcomes and whether the breaker is open.
#[derive(Debug)]
pub struct BreakerState {
    policy: BreakerPolicy,
    recent: VecDeque<bool>,
    open_until: Option<Instant>,
}

impl BreakerState {
    pub fn new(policy: BreakerPolicy) -> BreakerState {
        BreakerState { policy, recent: VecDeque::with_capacity(policy.window), open_until: None }
    }

    /// Records a batch outcome at `now`; returns `Some(until)` when this outcome opens the breaker.
    pub fn record(&mut self, failed: bool, elapsed: Duration, now: Instant) -> Option<Instant> {
        let failed = failed || elapsed > self.policy.latency_budget;
        if self.recent.len() == self.policy.window {
            self.recent.pop_front();
        }
        self.recent.push_back(failed);
        let failures = self.recent.iter().filter(|f| **f).count();
        let enough = self.recent.len() >= self.policy.min_batches.max(1);
        if self.is_open(now) || !enough {
            return None;
        }
        if failures as f64 / self.recent.len() as f64 >= self.policy.max_failure_ratio {
            let until = now + self.policy.cooldown;
            self.open_until = Some(until);
            // After the cool-down the shadow starts from a clean window.
            self.recent.clear();
            return Some(until);
        }
        None
    }

    pub fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|until| now < until)
    }
}

/// A shareable breaker.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<BreakerState>,
    /// Nanoseconds after `epoch` until which the breaker is open (0 = closed). Read lock-free by
    /// the request path.
    open_until_ns: AtomicU64,
    epoch: Instant,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Breaker {
        Breaker {
            state: Mutex::new(BreakerState::new(policy)),
            open_until_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// True while the shadow is paused.
    pub fn is_open(&self) -> bool {
        let until = self.open_until_ns.load(Ordering::Relaxed);
        until != 0 && (self.epoch.elapsed().as_nanos() as u64) < until
    }

    /// Records a batch; returns true when this batch opened the breaker.
    pub fn record(&self, failed: bool, elapsed: Duration) -> bool {
        let now = Instant::now();
        // A poisoned lock only means another worker panicked mid-record; the state is still a
        // valid window, so keep using it.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.record(failed, elapsed, now) {
            Some(until) => {
                let ns = until.duration_since(self.epoch).as_nanos() as u64;
                self.open_until_ns.store(ns.max(1), Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BreakerPolicy = BreakerPolicy {
        window: 10,
        min_batches: 4,
        max_failure_ratio: 0.5,
        latency_budget: Duration::from_millis(100),
        cooldown: Duration::from_secs(30),
    };
    const FAST: Duration = Duration::from_millis(1);

    #[test]
    fn stays_closed_below_the_ratio() {
        let mut b = BreakerState::new(POLICY);
        let t = Instant::now();
        for i in 0..20 {
            assert_eq!(b.record(i % 3 == 1, FAST, t), None);
        }
        assert!(!b.is_open(t));
    }

    #[test]
    fn needs_enough_batches_before_opening() {
        let mut b = BreakerState::new(POLICY);
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.record(true, FAST, t), None);
        }
        assert_eq!(b.record(true, FAST, t), Some(t + POLICY.cooldown));
        assert!(b.is_open(t + Duration::from_secs(29)));
    }

    #[test]
    fn slow_batches_count_as_failures() {
        let mut b = BreakerState::new(POLICY);
        let t = Instant::now();
        let slow = Duration::from_millis(150);
        let opened = (0..4).filter_map(|_| b.record(false, slow, t)).count();
        assert_eq!(opened, 1);
    }

    #[test]
    fn resumes_after_the_cooldown_with_a_clean_window() {
        let mut b = BreakerState::new(POLICY);
        let t = Instant::now();
        for _ in 0..4 {
            b.record(true, FAST, t);
        }
        let later = t + POLICY.cooldown;
        assert!(!b.is_open(later));
        // One more failure alone does not reopen it: the window starts empty.
        assert_eq!(b.record(true, FAST, later), None);
        assert!(!b.is_open(later));
    }

    #[test]
    fn shared_breaker_reports_open() {
        let b = Breaker::new(POLICY);
        assert!(!b.is_open());
        let opened: Vec<bool> = (0..4).map(|_| b.record(true, FAST)).collect();
        assert_eq!(opened, [false, false, false, true]);
        assert!(b.is_open());
    }
}
