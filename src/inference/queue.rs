//! A model's job queue: the short and the long lane, each bounded, each shared fairly between the
//! callers with jobs in it (`rotation`).
//!
//! A plain FIFO lets one caller stall everyone: a client keeping 512 calls in flight on 8
//! connections filled a live model's 256 queued jobs, and another caller's calls waited behind
//! all of them (p99 5.0 -> 28.9 ms) or were refused as `queue_full` (51 of 1,600). Here each lane
//! keeps one FIFO per caller and workers take one job per caller in turn, so a caller's job waits
//! for about one job of each other caller, however many those have queued. When a lane is full,
//! a job from a caller holding fewer jobs than the one holding the most still gets in: that
//! caller's newest job is pushed out (it is answered RESOURCE_EXHAUSTED and counted as
//! `fair_share`), so only the caller crowding the lane is refused.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

pub use crate::request::Caller;
use crate::rotation::Rotation;

/// Why an item was not queued; the item is handed back.
#[derive(Debug)]
pub enum Refused<T> {
    /// The lane is full and the caller already holds the most of it.
    Full(T),
    /// Every producer is gone: the model is shutting down.
    Closed(T),
}

/// One lane: its jobs in rotation by caller, and its bound.
struct Lane<T> {
    jobs: Rotation<T>,
    capacity: usize,
}

impl<T> Lane<T> {
    fn new(capacity: usize) -> Lane<T> {
        Lane { jobs: Rotation::default(), capacity: capacity.max(1) }
    }

    /// Queues `item`; `Ok(Some(pushed_out))` when a full lane made room by taking the newest item
    /// of the caller holding the most.
    fn push(&mut self, caller: Caller, item: T) -> Result<Option<T>, T> {
        let mut pushed_out = None;
        if self.jobs.len() >= self.capacity {
            let Some((crowding, most)) = self.jobs.crowding() else {
                return Err(item);
            };
            if crowding == caller || most <= self.jobs.held(caller) + 1 {
                return Err(item);
            }
            pushed_out = self.jobs.pop_newest(crowding);
        }
        self.jobs.push(caller, item);
        Ok(pushed_out)
    }
}

struct State<T> {
    lanes: [Lane<T>; 2],
    /// Live `Producer`s; at zero the queue is closed and consumers drain what is left.
    producers: usize,
    /// Consumers waiting on `Shared::lane_ready`, by lane, and on `Shared::any_ready`.
    waiting: [usize; 2],
    waiting_any: usize,
}

impl<T> State<T> {
    /// How many consumers wait for `lane`'s jobs, or (`None`) for either lane's.
    fn waiters(&mut self, lane: Option<usize>) -> &mut usize {
        match lane {
            Some(lane) => &mut self.waiting[lane],
            None => &mut self.waiting_any,
        }
    }
}

/// A push wakes one consumer that can take its job, and none when none sleeps: a model's long-job
/// thread sleeps on through short jobs.
struct Shared<T> {
    state: Mutex<State<T>>,
    /// Consumers waiting for one lane's jobs.
    lane_ready: [Condvar; 2],
    /// Consumers waiting for a job of either lane.
    any_ready: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A new queue of two lanes of `capacity` items each.
pub fn queue<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            lanes: [Lane::new(capacity), Lane::new(capacity)],
            producers: 1,
            waiting: [0; 2],
            waiting_any: 0,
        }),
        lane_ready: [Condvar::new(), Condvar::new()],
        any_ready: Condvar::new(),
    });
    (Producer(shared.clone()), Consumer(shared))
}

/// The sending side; the queue closes when the last clone is dropped.
pub struct Producer<T>(Arc<Shared<T>>);

impl<T> Clone for Producer<T> {
    fn clone(&self) -> Producer<T> {
        self.0.lock().producers += 1;
        Producer(self.0.clone())
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.producers -= 1;
        if state.producers == 0 {
            drop(state);
            self.0.lane_ready.iter().chain([&self.0.any_ready]).for_each(Condvar::notify_all);
        }
    }
}

impl<T> Producer<T> {
    /// Queues `item` from `caller` in `lane` without waiting. `Ok(Some(item))` hands back the item
    /// pushed out to make room (see the module docs), for the caller of `push` to answer.
    pub fn push(&self, lane: usize, caller: Caller, item: T) -> Result<Option<T>, Refused<T>> {
        let mut state = self.0.lock();
        if state.producers == 0 {
            return Err(Refused::Closed(item));
        }
        let pushed = state.lanes[lane].push(caller, item).map_err(Refused::Full)?;
        let wake = if state.waiting[lane] > 0 {
            Some(&self.0.lane_ready[lane])
        } else {
            (state.waiting_any > 0).then_some(&self.0.any_ready)
        };
        drop(state);
        if let Some(condition) = wake {
            condition.notify_one();
        }
        Ok(pushed)
    }

    /// Items queued in both lanes.
    pub fn queued(&self) -> usize {
        let state = self.0.lock();
        state.lanes.iter().map(|l| l.jobs.len()).sum()
    }
}

/// The receiving side, shared by a model's workers.
pub struct Consumer<T>(Arc<Shared<T>>);

impl<T> Clone for Consumer<T> {
    fn clone(&self) -> Consumer<T> {
        Consumer(self.0.clone())
    }
}

impl<T> Consumer<T> {
    /// The next item of `lane` without waiting: `Ok(None)` if it is empty, `Err(())` if it is empty
    /// and closed.
    pub fn try_pop(&self, lane: usize) -> Result<Option<T>, Closed> {
        let mut state = self.0.lock();
        match state.lanes[lane].jobs.pop() {
            Some(item) => Ok(Some(item)),
            None if state.producers == 0 => Err(Closed),
            None => Ok(None),
        }
    }

    /// The next item of the first non-empty lane in `order`, waiting while all are empty (until
    /// `until`, if given). `None` once they are empty and the queue is closed, or at `until`.
    pub fn pop(&self, order: &[usize], until: Option<Instant>) -> Option<(T, usize)> {
        let mut state = self.0.lock();
        let mut backoff = 0;
        loop {
            if let Some(found) = order.iter().find_map(|&lane| state.lanes[lane].jobs.pop().map(|item| (item, lane))) {
                return Some(found);
            }
            if state.producers == 0 {
                return None;
            }
            if backoff <= BACKOFF_YIELD_STEPS {
                drop(state);
                back_off(backoff);
                backoff += 1;
                state = self.0.lock();
                continue;
            }
            let left = match until {
                None => None,
                Some(until) => Some(until.checked_duration_since(Instant::now())?),
            };
            let one = match order {
                [lane] => Some(*lane),
                _ => None,
            };
            let condition = one.map_or(&self.0.any_ready, |lane| &self.0.lane_ready[lane]);
            *state.waiters(one) += 1;
            state = match left {
                None => condition.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(left) => condition.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0,
            };
            *state.waiters(one) -= 1;
        }
    }

    /// Items queued in `lane`.
    pub fn len(&self, lane: usize) -> usize {
        self.0.lock().lanes[lane].jobs.len()
    }

    /// Items queued in both lanes.
    pub fn total(&self) -> usize {
        self.0.lock().lanes.iter().map(|l| l.jobs.len()).sum()
    }
}

/// Steps a consumer finding the queue empty spins (the first `BACKOFF_SPIN_STEPS`, 2^step
/// spins each) or yields its CPU before it sleeps, as crossbeam's channels do. A worker that
/// slept at once was woken by every job and ran batches of one: with 16 calls in flight on one
/// core, 2.5 reviews a batch against 9.3, 0.73x the calls/s and 1.95x the p99
/// (`benches/ab.sh`, docs/benchmarks.md); yielding lets the calls being decoded now queue their
/// jobs for the next batch.
const BACKOFF_SPIN_STEPS: u32 = 6;
const BACKOFF_YIELD_STEPS: u32 = 10;

fn back_off(step: u32) {
    if step <= BACKOFF_SPIN_STEPS {
        (0..1u32 << step).for_each(|_| std::hint::spin_loop());
    } else {
        std::thread::yield_now();
    }
}

/// The queue is empty and every producer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: Caller = Caller::connection(1);
    const B: Caller = Caller::connection(2);
    const C: Caller = Caller::connection(3);

    fn drain(consumer: &Consumer<&'static str>, lane: usize) -> Vec<&'static str> {
        std::iter::from_fn(|| consumer.try_pop(lane).unwrap()).collect()
    }

    #[test]
    fn callers_take_turns_one_job_each() {
        let (producer, consumer) = queue(16);
        for (caller, item) in [(A, "a1"), (A, "a2"), (B, "b1"), (A, "a3")] {
            producer.push(0, caller, item).unwrap();
        }
        assert_eq!(drain(&consumer, 0), ["a1", "b1", "a2", "a3"]);
    }

    #[test]
    fn a_full_lane_pushes_out_the_newest_job_of_the_caller_holding_the_most() {
        let (producer, consumer) = queue(4);
        for item in ["a1", "a2", "a3", "a4"] {
            assert!(producer.push(0, A, item).unwrap().is_none());
        }
        // A holds the whole lane: its next job is refused, B's gets in at A's expense.
        assert!(matches!(producer.push(0, A, "a5"), Err(Refused::Full("a5"))));
        assert_eq!(producer.push(0, B, "b1").unwrap(), Some("a4"));
        assert_eq!(producer.push(0, B, "b2").unwrap(), Some("a3"));
        // Now A holds 2 and B 2: neither may push the other out.
        assert!(matches!(producer.push(0, B, "b3"), Err(Refused::Full("b3"))));
        assert!(matches!(producer.push(0, A, "a6"), Err(Refused::Full("a6"))));
        // C holds none and A (or B) two: C gets in.
        assert!(producer.push(0, C, "c1").unwrap().is_some());
        assert_eq!(consumer.len(0), 4);
        let left = drain(&consumer, 0);
        assert_eq!(left.len(), 4);
        assert!(left.contains(&"a1") && left.contains(&"b1") && left.contains(&"c1"), "{left:?}");
    }

    #[test]
    fn lanes_fill_and_drain_apart() {
        let (producer, consumer) = queue(1);
        producer.push(0, A, "short").unwrap();
        producer.push(1, A, "long").unwrap();
        assert!(matches!(producer.push(1, A, "long2"), Err(Refused::Full(_))));
        assert_eq!(consumer.total(), 2);
        assert_eq!(consumer.pop(&[1, 0], None), Some(("long", 1)));
        assert_eq!(consumer.pop(&[1, 0], None), Some(("short", 0)));
        assert_eq!(consumer.try_pop(0), Ok(None));
    }

    #[test]
    fn consumers_drain_then_see_the_queue_closed_when_the_last_producer_goes() {
        let (producer, consumer) = queue(4);
        let second = producer.clone();
        producer.push(0, A, "left").unwrap();
        drop(producer);
        let waiter = {
            let consumer = consumer.clone();
            std::thread::spawn(move || (consumer.pop(&[0], None), consumer.pop(&[0], None)))
        };
        // The second producer keeps the queue open: the waiter blocks on its second pop.
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished());
        drop(second);
        assert_eq!(waiter.join().unwrap(), (Some(("left", 0)), None));
        assert_eq!(consumer.try_pop(0), Err(Closed));
    }

    #[test]
    fn a_push_wakes_a_consumer_of_its_lane_or_of_either() {
        let (producer, consumer) = queue(4);
        let waiter = |order: &'static [usize]| {
            let consumer = consumer.clone();
            std::thread::spawn(move || consumer.pop(order, None))
        };
        let long_only = waiter(&[1]);
        let either = waiter(&[0, 1]);
        // Both asleep (after their backoff): one for the long lane, one for either.
        let asleep = Instant::now() + Duration::from_secs(10);
        let sleeping = || {
            let state = consumer.0.lock();
            (state.waiting, state.waiting_any)
        };
        while sleeping() != ([0, 1], 1) {
            assert!(Instant::now() < asleep, "the consumers never went to sleep");
            std::thread::sleep(Duration::from_millis(1));
        }
        // A short job is for the consumer of either lane; the long-only one sleeps on.
        producer.push(0, A, "short").unwrap();
        assert_eq!(either.join().unwrap(), Some(("short", 0)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!long_only.is_finished());
        producer.push(1, A, "long").unwrap();
        assert_eq!(long_only.join().unwrap(), Some(("long", 1)));
        let state = consumer.0.lock();
        assert_eq!((state.waiting, state.waiting_any), ([0, 0], 0));
    }

    #[test]
    fn a_pop_with_a_deadline_gives_up_at_it() {
        let (producer, consumer) = queue::<&str>(4);
        assert_eq!(consumer.pop(&[0], Some(Instant::now() + Duration::from_millis(5))), None);
        assert!(matches!(producer.push(0, A, "x"), Ok(None)));
    }
}
